// The Linear family on CUDA (cuda_kernels.h's LinearCall says what a call computes), float16 in
// and out, fp32 sums.
//
// Up to kGemvRows rows (decode) one GEMV kernel does all of it: the weight read once with
// 16-byte loads, each output's K split over 1-8 warps of a block so that small projections still
// fill the GPU (cuBLAS reads the 1B shape's qkv / o / down at 1.3-2.6 TB/s at one row: run12);
// with a norm, each block first forms x + skip and its RMS norm in shared memory (block 0 also
// writes the sum); with SwiGLU, a warp sums an output's gate row and up row and writes
// silu(gate) * up. More rows (prefill, large decode batches), or shapes the GEMV does not take:
// our norm kernel into the scratch output, cuBLAS's GemmEx on onnxruntime's own handle for the
// stream (the call onnxruntime's MatMul makes, captured into decode graphs as theirs is), the
// SwiGLU kernel.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda_kernels.h"
#include "linear_common.cuh"

namespace {

using namespace linear_common;

// Tunables, measured side by side by benchmarks/gpu_gemv_chain.py (`now:NAME=VALUE` variants);
// the defaults are the configuration run13 measured. kProgrammatic: each GEMV a programmatic
// dependent launch (sm_90 on), reading its constant weights before it waits for the kernel before
// it (OPTIMIZER_CUDA_PDL=0 turns it off at run time); kPreload: 16-byte weight chunks a lane reads
// before its inputs are ready; kPrefetchBytes: weights up to this size requested whole from L2 at
// once (one bulk prefetch a row). run14, the 1B step's 65 GEMVs: 830 us with the defaults; with
// every row prefetched (1L << 40) 916 us, and 867 with PDL as well.
constexpr bool kProgrammatic = false;
constexpr int kPreload = 0;
constexpr long kPrefetchBytes = 0;

// A LinearCall with typed pointers and int sizes.
struct LinearArgs {
  const __half* x;
  const __half* skip;
  const __half* gamma;
  const __half* w;
  __half* y;
  __half* sum;
  int n;
  int k;
  float epsilon;
  bool prefetch;  // request the block's weight rows from L2 at once (kPrefetchBytes)
};

LinearArgs typed(const LinearCall& c) {
  return {static_cast<const __half*>(c.x), static_cast<const __half*>(c.skip), static_cast<const __half*>(c.gamma),
          static_cast<const __half*>(c.w), static_cast<__half*>(c.y), static_cast<__half*>(c.sum),
          static_cast<int>(c.n), static_cast<int>(c.k), c.epsilon,
          c.n * c.k * (c.swiglu ? 2 : 1) * static_cast<long>(sizeof(__half)) <= kPrefetchBytes};
}

__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
  const __half2* ah = reinterpret_cast<const __half2*>(&a);
  const __half2* bh = reinterpret_cast<const __half2*>(&b);
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 af = __half22float2(ah[j]);
    const float2 bf = __half22float2(bh[j]);
    sum = fmaf(af.x, bf.x, fmaf(af.y, bf.y, sum));
  }
  return sum;
}

// One block: kWarps / WPO outputs, each summed by WPO warps over interleaved 16-byte chunks of
// K; with SWIGLU a warp sums the output's gate row n and up row n + N together.
template <int ROWS, int WPO, bool NORM, bool SWIGLU>
__global__ void __launch_bounds__(kThreads) gemv(LinearArgs a) {
  constexpr int kOuts = kWarps / WPO;
  constexpr int kSums = SWIGLU ? 2 : 1;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * kOuts + warp / WPO;
  const int part = warp % WPO;
  const int chunks = a.k / 8;
  const bool live = n < a.n;
  const uint4* rows_w[kSums];
#pragma unroll
  for (int s = 0; s < kSums; ++s) {
    rows_w[s] = reinterpret_cast<const uint4*>(a.w + (static_cast<size_t>(n) + s * a.n) * a.k);
  }
  if constexpr (kPrefetchBytes > 0) {
    if (a.prefetch && live && part == 0 && lane == 0) {
#pragma unroll
      for (int s = 0; s < kSums; ++s) prefetch_l2(rows_w[s], static_cast<unsigned>(a.k) * sizeof(__half));
    }
  }
  uint4 early[kPreload > 0 ? kPreload : 1][kSums];
#pragma unroll
  for (int i = 0; i < kPreload; ++i) {
    const int c = part * 32 + lane + i * 32 * WPO;
#pragma unroll
    for (int s = 0; s < kSums; ++s) early[i][s] = live && c < chunks ? __ldg(rows_w[s] + c) : make_uint4(0, 0, 0, 0);
  }
  if constexpr (kProgrammatic) {
    let_next_start();
    wait_for_inputs();
  }
  const __half* x = a.x;
  if constexpr (NORM) {
    extern __shared__ uint4 normalized[];
    if (kPreload == 0 && kPrefetchBytes == 0 && live) {  // the first chunks start towards L2 while it normalizes
      for (int c = part * 32 + lane, i = 0; c < chunks && i < 4; c += 32 * WPO, ++i) {
#pragma unroll
        for (int s = 0; s < kSums; ++s) asm volatile("prefetch.global.L2 [%0];" ::"l"(rows_w[s] + c));
      }
    }
    __half* xs = reinterpret_cast<__half*>(normalized);
    skip_norm<ROWS>(a, xs, blockIdx.x == 0 ? a.sum : nullptr);
    x = xs;
  }
  float acc[kSums][ROWS];
#pragma unroll
  for (int s = 0; s < kSums; ++s)
#pragma unroll
    for (int m = 0; m < ROWS; ++m) acc[s][m] = 0.f;
  if (live) {
#pragma unroll
    for (int i = 0; i < kPreload; ++i) {
      const int c = part * 32 + lane + i * 32 * WPO;
      if (c < chunks) {
#pragma unroll
        for (int m = 0; m < ROWS; ++m) {
          const uint4 xv = load16(x + static_cast<size_t>(m) * a.k + 8 * c);
#pragma unroll
          for (int s = 0; s < kSums; ++s) acc[s][m] += dot8(early[i][s], xv);
        }
      }
    }
#pragma unroll 4
    for (int c = part * 32 + lane + kPreload * 32 * WPO; c < chunks; c += 32 * WPO) {
      uint4 wv[kSums];
#pragma unroll
      for (int s = 0; s < kSums; ++s) wv[s] = __ldg(rows_w[s] + c);
#pragma unroll
      for (int m = 0; m < ROWS; ++m) {
        const uint4 xv = load16(x + static_cast<size_t>(m) * a.k + 8 * c);
#pragma unroll
        for (int s = 0; s < kSums; ++s) acc[s][m] += dot8(wv[s], xv);
      }
    }
  }
  store_outputs<ROWS, WPO, SWIGLU>(acc, a.y, a.n, warp, lane);
}

// The fp16 family for linear_common's launch_gemv.
struct Fp16Gemv {
  using Args = LinearArgs;
  static constexpr int kChunkValues = 8;
  static constexpr bool programmatic = kProgrammatic;
  template <int ROWS, int WPO, bool NORM, bool SWIGLU>
  static auto kernel() { return gemv<ROWS, WPO, NORM, SWIGLU>; }
};

// The plain GEMV takes x: few rows, K in 16-byte chunks, aligned data.
bool gemv_takes(const void* x, const void* w, int64_t rows, int64_t k) {
  return rows <= kGemvRows && k % 8 == 0 && aligned(x) && aligned(w);
}

// The GEMV does the whole call, the norm too: its normalized rows fit a block's shared memory.
bool fused(const LinearCall& c) {
  if (!gemv_takes(c.x, c.w, c.rows, c.k)) return false;
  return !c.norm || (aligned(c.skip) && aligned(c.gamma) && aligned(c.sum) && c.rows * c.k * 2 <= kNormSharedBytes);
}

// Otherwise the norm goes to the scratch's first rows * k values (aligned: onnxruntime's buffers
// are), and a GEMM's (rows, 2n) output before SwiGLU after them, where the GEMV cannot take x.
bool swiglu_needs_gemm(const LinearCall& c) {
  return !gemv_takes(c.norm ? c.scratch : c.x, c.w, c.rows, c.k);
}

}  // namespace

bool has_cuda_kernels() { return true; }

int64_t linear_scratch_elements(const LinearCall& c) {
  if (fused(c)) return 0;
  return c.rows * ((c.norm ? c.k : 0) + (c.swiglu && swiglu_needs_gemm(c) ? 2 * c.n : 0));
}

const char* linear_cuda(const LinearCall& call, void* stream, void* cublas) {
  if (call.rows > INT32_MAX || call.n > INT32_MAX / 2 || call.k > INT32_MAX) {
    return "Linear: more than 2^31 - 1 rows, outputs or inputs";
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  LinearArgs a = typed(call);
  const int rows = static_cast<int>(call.rows);
  if (fused(call)) {  // the decode path: one kernel
    launch_gemv_call<Fp16Gemv>(a, rows, call.norm, call.swiglu, s);
    return launched();
  }
  __half* free = static_cast<__half*>(call.scratch);
  if (call.norm) {  // x + skip and its norm first, into the scratch
    skip_norm_rows<<<static_cast<unsigned>(rows), kThreads, 0, s>>>(a, free);
    if (const char* failure = launched()) return failure;
    a.x = free;
    free += call.rows * call.k;
  }
  if (gemv_takes(a.x, a.w, rows, a.k)) {
    launch_gemv_call<Fp16Gemv>(a, rows, false, call.swiglu, s);
    return launched();
  }
  if (!call.swiglu) return gemm(a.x, a.w, a.y, rows, a.n, a.k, a.n, cublas);
  const int64_t both = 2 * static_cast<int64_t>(a.n);
  if (const char* failure = gemm(a.x, a.w, free, rows, both, a.k, both, cublas)) return failure;
  return swiglu_cuda(free, a.y, rows, a.n, stream);
}
