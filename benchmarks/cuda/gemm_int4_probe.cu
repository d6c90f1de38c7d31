// A probe, not product code: can a plain tensor-core kernel multiply 16-64 rows by 4-bit weights
// (onnxruntime MatMulNBits' layout) without dequantizing them to memory first, fast enough that
// int4 is no slower than fp16 at batch 64 (issue 20)? The product's LinearInt4 dequantizes band
// by band into L2 for cuBLAS at more than 4 rows; onnxruntime's own int4 GEMMs were 0.69-0.94x
// fp16 there (run8, run9). benchmarks/gpu_int4_gemm_probe.py times this against cuBLAS fp16.
//
//   y (M, N) = x (M, K) . w^T, x fp16 row-major; w: codes (N, K / 32, 16) uint8, two codes a
//   byte, the low nibble first; scales (N, K / 32) fp16, symmetric (zero point 8). K a multiple
//   of 32; x 16-byte aligned.
//
// A block: 64 rows x 64 outputs, 4 warps, each warp 16 outputs for all 64 rows (four 16x16 fp32
// accumulators, WMMA). Per 32 of K: the x tile to shared memory; 64 threads each read one
// output's 16 bytes of codes (32 codes, one quantization block) and write them dequantized to
// shared memory; two 16-deep WMMA steps. Split-K over gridDim.z (fp32 atomics into a zeroed
// buffer, then one conversion to fp16) so that small N still fills the GPU.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#include <stdint.h>

namespace {

using namespace nvcuda;

constexpr int kBM = 64, kBN = 64, kBK = 32;
constexpr int kThreads = 128;
constexpr int kLd = kBK + 8;       // shared tiles' row stride in halves (16-byte multiple, fewer bank conflicts)
constexpr int kLdC = kBN + 4;      // the fp32 output tile's

__global__ void __launch_bounds__(kThreads) gemm_int4(const __half* __restrict__ x, const uint8_t* __restrict__ codes,
                                                    const __half* __restrict__ scales, float* __restrict__ out,
                                                    int m_rows, int n_out, int k, int k_steps_per_split) {
  __shared__ __align__(32) __half as[kBM * kLd];
  __shared__ __align__(32) __half bs[kBN * kLd];
  __shared__ __align__(32) float cs[kBM * kLdC];
  const int warp = threadIdx.x / 32;
  const int n0 = blockIdx.x * kBN, m0 = blockIdx.y * kBM;
  const int steps = k / kBK;
  const int first = blockIdx.z * k_steps_per_split;
  const int last = min(steps, first + k_steps_per_split);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kBM / 16];
#pragma unroll
  for (int f = 0; f < kBM / 16; ++f) wmma::fill_fragment(acc[f], 0.f);
  for (int step = first; step < last; ++step) {
    const int k0 = step * kBK;
    // x tile: 64 rows x 32 halves = 256 16-byte pieces, two a thread
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int piece = threadIdx.x + i * kThreads;
      const int r = piece / 4, c = (piece % 4) * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (m0 + r < m_rows) v = *reinterpret_cast<const uint4*>(x + static_cast<size_t>(m0 + r) * k + k0 + c);
      *reinterpret_cast<uint4*>(as + r * kLd + c) = v;
    }
    // codes: output n0 + t's 32 codes of this step, dequantized into row t of bs
    if (threadIdx.x < kBN) {
      const int t = threadIdx.x;
      __half2 h[16];
      if (n0 + t < n_out) {
        const size_t row = static_cast<size_t>(n0 + t);
        const uint4 q = __ldg(reinterpret_cast<const uint4*>(codes + row * (k / 2) + k0 / 2));
        const __half2 scale = __half2half2(scales[row * (k / kBK) + step]);
        const __half2 offset = __float2half2_rn(1024.f + 8.f);
        const uint32_t* words = reinterpret_cast<const uint32_t*>(&q);
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          __half2 pair[4];  // (c_j, c_j+4) of the word's eight codes
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const uint32_t bits = ((words[w] >> (4 * j)) & 0x000F000Fu) | 0x64006400u;
            pair[j] = __hmul2(__hsub2(*reinterpret_cast<const __half2*>(&bits), offset), scale);
          }
          // codes 8w .. 8w + 7 in order: (c0, c1), (c2, c3), (c4, c5), (c6, c7)
          h[4 * w + 0] = __halves2half2(__low2half(pair[0]), __low2half(pair[1]));
          h[4 * w + 1] = __halves2half2(__low2half(pair[2]), __low2half(pair[3]));
          h[4 * w + 2] = __halves2half2(__high2half(pair[0]), __high2half(pair[1]));
          h[4 * w + 3] = __halves2half2(__high2half(pair[2]), __high2half(pair[3]));
        }
      } else {
#pragma unroll
        for (int j = 0; j < 16; ++j) h[j] = __float2half2_rn(0.f);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) *reinterpret_cast<uint4*>(bs + t * kLd + 8 * j) = reinterpret_cast<const uint4*>(h)[j];
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b;
      wmma::load_matrix_sync(b, bs + (16 * warp) * kLd + kk, kLd);  // (k, n) at n * kLd + k
#pragma unroll
      for (int f = 0; f < kBM / 16; ++f) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
        wmma::load_matrix_sync(a, as + (16 * f) * kLd + kk, kLd);
        wmma::mma_sync(acc[f], a, b, acc[f]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int f = 0; f < kBM / 16; ++f) wmma::store_matrix_sync(cs + (16 * f) * kLdC + 16 * warp, acc[f], kLdC, wmma::mem_row_major);
  __syncthreads();
  for (int i = threadIdx.x; i < kBM * kBN; i += kThreads) {
    const int r = i / kBN, c = i % kBN;
    if (m0 + r < m_rows && n0 + c < n_out) atomicAdd(out + static_cast<size_t>(m0 + r) * n_out + n0 + c, cs[r * kLdC + c]);
  }
}

__global__ void to_half(const float* in, __half* out, int64_t count) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) out[i] = __float2half(in[i]);
}

}  // namespace

// 0 on success; -1 for a shape or alignment the probe does not take; else the CUDA error code.
// `work`: m * n floats (zeroed here); `splits`: how many parts K is cut into.
extern "C" int gemm_int4_probe(const void* x, const void* codes, const void* scales, void* y, void* work, int m, int n,
                               int k, int splits, void* stream) {
  if (m < 1 || k % kBK != 0 || splits < 1 || reinterpret_cast<uintptr_t>(x) % 16 ||
      reinterpret_cast<uintptr_t>(codes) % 16) {
    return -1;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const size_t count = static_cast<size_t>(m) * n;
  cudaMemsetAsync(work, 0, count * sizeof(float), s);
  const int steps = k / kBK;
  const int per_split = (steps + splits - 1) / splits;
  dim3 grid((n + kBN - 1) / kBN, (m + kBM - 1) / kBM, (steps + per_split - 1) / per_split);
  gemm_int4<<<grid, kThreads, 0, s>>>(static_cast<const __half*>(x), static_cast<const uint8_t*>(codes),
                                      static_cast<const __half*>(scales), static_cast<float*>(work), m, n, k, per_split);
  to_half<<<static_cast<unsigned>((count + 255) / 256), 256, 0, s>>>(static_cast<const float*>(work),
                                                                     static_cast<__half*>(y), count);
  return static_cast<int>(cudaGetLastError());
}
