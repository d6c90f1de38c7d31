// A probe, not product code: can a plain fp16 GEMV beat cuBLAS at batch-1 decode sizes, where
// cuBLAS's kernels for the small linears stay far from the memory bound (run10-matmul-layout:
// the 1B qkv 12.6 MB in 7.5 us, 1.7 TB/s)? benchmarks/gpu_gemv_probe.py loads this through
// ctypes and times it against torch's cuBLAS linear, both replayed from CUDA graphs.
//
//   y (M, N) = x (M, K) . w^T, w stored (N, K) row-major, fp16 in and out, fp32 sums; M <= 4,
//   K a multiple of 8, x and w 16-byte aligned. One warp an output column n: 16-byte loads of
//   w's row n, the x rows read alongside (they stay in L1/L2), a warp reduction at the end.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "warp_rows.cuh"

namespace {

template <int ROWS>
__global__ void gemv_rows(const __half* __restrict__ x, const __half* __restrict__ w, __half* __restrict__ y,
                          int n_out, int k) {
  const int n = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (n >= n_out) return;
  const uint4* w_row = reinterpret_cast<const uint4*>(w + static_cast<size_t>(n) * k);
  const int chunks = k / 8;
  float acc[ROWS];
#pragma unroll
  for (int m = 0; m < ROWS; ++m) acc[m] = 0.f;
#pragma unroll 4
  for (int c = lane; c < chunks; c += 32) {
    const uint4 wv = __ldg(w_row + c);
    const __half2* wh = reinterpret_cast<const __half2*>(&wv);
#pragma unroll
    for (int m = 0; m < ROWS; ++m) {
      const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + static_cast<size_t>(m) * k) + c);
      const __half2* xh = reinterpret_cast<const __half2*>(&xv);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 a = __half22float2(wh[j]);
        const float2 b = __half22float2(xh[j]);
        acc[m] = fmaf(a.x, b.x, fmaf(a.y, b.y, acc[m]));
      }
    }
  }
  store_warp_sums<ROWS>(acc, lane, y, n_out, n);
}

}  // namespace

// 0 on success; -1 for a shape or alignment the kernel does not take; else the CUDA error code.
extern "C" int gemv_f16(const void* x, const void* w, void* y, int m, int n, int k, void* stream) {
  if (m < 1 || m > 4 || k % 8 != 0 || reinterpret_cast<uintptr_t>(x) % 16 || reinterpret_cast<uintptr_t>(w) % 16) {
    return -1;
  }
  constexpr int kThreads = 256;  // 8 warps, 8 outputs a block
  const int blocks = (n * 32 + kThreads - 1) / kThreads;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const __half* xh = static_cast<const __half*>(x);
  const __half* wh = static_cast<const __half*>(w);
  __half* yh = static_cast<__half*>(y);
  switch (m) {
    case 1: gemv_rows<1><<<blocks, kThreads, 0, s>>>(xh, wh, yh, n, k); break;
    case 2: gemv_rows<2><<<blocks, kThreads, 0, s>>>(xh, wh, yh, n, k); break;
    case 3: gemv_rows<3><<<blocks, kThreads, 0, s>>>(xh, wh, yh, n, k); break;
    default: gemv_rows<4><<<blocks, kThreads, 0, s>>>(xh, wh, yh, n, k); break;
  }
  return static_cast<int>(cudaGetLastError());
}
