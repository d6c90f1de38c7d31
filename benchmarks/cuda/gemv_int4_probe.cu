// A probe, not product code: how fast can a plain kernel read 4-bit weights at batch-1 decode
// sizes? onnxruntime's one-row int4 kernel (MatMulFloat4BitsKernelM1) took 500 us a 1B step for
// ~0.65 GB (run8-kernels: ~1.3 TB/s). Same weight layout as onnxruntime's MatMulNBits, so an op
// built on it could take those nodes' initializers as they are:
//
//   b (N, K/64, 32) uint8: two 4-bit codes a byte, the low nibble first; scales (N, K/64) fp16;
//   symmetric (zero point 8): w[n, k] = (code - 8) * scale[n, k / 64]; y (M, N) = x (M, K) . w^T.
//   M <= 4, K a multiple of 64, 16-byte aligned x and b. One warp an output column n; a lane
//   reads 16 bytes (32 codes, half a block) at a time.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "warp_rows.cuh"

namespace {

constexpr int kBlock = 64;

template <int ROWS>
__global__ void gemv_int4_rows(const __half* __restrict__ x, const uint8_t* __restrict__ b,
                               const __half* __restrict__ scales, __half* __restrict__ y, int n_out, int k) {
  const int n = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (n >= n_out) return;
  const int chunks = k / 32;  // 16 bytes of codes each
  const uint4* b_row = reinterpret_cast<const uint4*>(b + static_cast<size_t>(n) * (k / 2));
  const __half* s_row = scales + static_cast<size_t>(n) * (k / kBlock);
  float acc[ROWS];
#pragma unroll
  for (int m = 0; m < ROWS; ++m) acc[m] = 0.f;
#pragma unroll 2
  for (int c = lane; c < chunks; c += 32) {
    const uint4 codes = __ldg(b_row + c);
    const float scale = __half2float(s_row[c / 2]);
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&codes);
    float w[32];
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      w[2 * j] = static_cast<float>(bytes[j] & 0xF) - 8.f;
      w[2 * j + 1] = static_cast<float>(bytes[j] >> 4) - 8.f;
    }
#pragma unroll
    for (int m = 0; m < ROWS; ++m) {
      const uint4* x_chunk = reinterpret_cast<const uint4*>(x + static_cast<size_t>(m) * k + c * 32);
      float sum = 0.f;
#pragma unroll
      for (int q = 0; q < 4; ++q) {  // 4 x 8 halves
        const uint4 xv = __ldg(x_chunk + q);
        const __half2* xh = reinterpret_cast<const __half2*>(&xv);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 xf = __half22float2(xh[j]);
          sum = fmaf(w[q * 8 + 2 * j], xf.x, fmaf(w[q * 8 + 2 * j + 1], xf.y, sum));
        }
      }
      acc[m] = fmaf(sum, scale, acc[m]);
    }
  }
  store_warp_sums<ROWS>(acc, lane, y, n_out, n);
}

}  // namespace

// 0 on success; -1 for a shape or alignment the kernel does not take; else the CUDA error code.
extern "C" int gemv_int4(const void* x, const void* b, const void* scales, void* y, int m, int n, int k,
                         void* stream) {
  if (m < 1 || m > 4 || k % kBlock != 0 || reinterpret_cast<uintptr_t>(x) % 16 ||
      reinterpret_cast<uintptr_t>(b) % 16) {
    return -1;
  }
  constexpr int kThreads = 256;
  const int blocks = (n * 32 + kThreads - 1) / kThreads;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const __half* xh = static_cast<const __half*>(x);
  const uint8_t* bb = static_cast<const uint8_t*>(b);
  const __half* sh = static_cast<const __half*>(scales);
  __half* yh = static_cast<__half*>(y);
  switch (m) {
    case 1: gemv_int4_rows<1><<<blocks, kThreads, 0, s>>>(xh, bb, sh, yh, n, k); break;
    case 2: gemv_int4_rows<2><<<blocks, kThreads, 0, s>>>(xh, bb, sh, yh, n, k); break;
    case 3: gemv_int4_rows<3><<<blocks, kThreads, 0, s>>>(xh, bb, sh, yh, n, k); break;
    default: gemv_int4_rows<4><<<blocks, kThreads, 0, s>>>(xh, bb, sh, yh, n, k); break;
  }
  return static_cast<int>(cudaGetLastError());
}
