// What the CUDA kernels of the Linear family share (linear.cu: float16 weights, linear_int4.cu:
// 4-bit ones): the block size, the block-wide sums, the fused skip RMS norm, and cuBLAS's GEMM
// on onnxruntime's handle. Included by those .cu files only (device code, nvcc).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <library_types.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>

#include <string>

#include "cublas_abi.h"
#include "op_math.h"
#include "pdl.cuh"

namespace linear_common {

constexpr int kGemvRows = 4;  // rows (decode) the GEMV kernels take; more go to cuBLAS
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr long kTargetWarps = 8192;         // enough resident warps to keep an H100 / H200's memory busy
constexpr int kNormSharedBytes = 32 * 1024;  // the normalized rows a fused-norm block keeps

__device__ __forceinline__ uint4 load16(const __half* p) { return *reinterpret_cast<const uint4*>(p); }

inline bool aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Warps an output: the most (1, 2, 4, 8) that keep all warps within kTargetWarps, while each
// warp still has a 16-byte chunk a lane, of the `chunks` an output's weights are read in.
inline int warps_per_output(long n, long chunks) {
  int wpo = 1;
  while (wpo < kWarps && n * wpo * 2 <= kTargetWarps && chunks >= 64L * wpo) wpo *= 2;
  return wpo;
}

using optimizer_pdl::let_next_start;  // programmatic dependent launch (pdl.cuh)
using optimizer_pdl::prefetch_l2;
using optimizer_pdl::programmatic_launch;
using optimizer_pdl::wait_for_inputs;

// kernel<<<blocks, kThreads, shared, s>>>(args), or with PROGRAMMATIC (where the device takes it)
// as a programmatic dependent launch: the kernel then calls let_next_start / wait_for_inputs.
template <bool PROGRAMMATIC, typename Args>
void launch_kernel(void (*kernel)(Args), unsigned blocks, size_t shared, cudaStream_t s, const Args& args) {
  if constexpr (!PROGRAMMATIC) {
    kernel<<<blocks, kThreads, shared, s>>>(args);
  } else {
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(blocks);
    config.blockDim = dim3(kThreads);
    config.dynamicSmemBytes = shared;
    config.stream = s;
    config.attrs = attribute;
    config.numAttrs = programmatic_launch() ? 1 : 0;
    cudaLaunchKernelEx(&config, kernel, args);
  }
}

// The sum over the block of each thread's `v[m]`, for every row m (all threads get it).
template <int ROWS>
__device__ inline void block_sums(float (&v)[ROWS]) {
  __shared__ float partial[kWarps][ROWS];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int m = 0; m < ROWS; ++m) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) v[m] += __shfl_xor_sync(0xffffffffu, v[m], offset);
    if (lane == 0) partial[warp][m] = v[m];
  }
  __syncthreads();
#pragma unroll
  for (int m = 0; m < ROWS; ++m) {
    v[m] = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) v[m] += partial[w][m];
  }
  __syncthreads();
}

// The GEMV kernels' end: each warp's sums (acc[s][m]: gate / up s, row m) added over the warp,
// then over an output's WPO warps, and y[m, n] written (silu(gate) * up with SWIGLU), for the
// block's kWarps / WPO outputs from blockIdx.x * (kWarps / WPO) on (warp and lane: the thread's).
template <int ROWS, int WPO, bool SWIGLU>
__device__ __forceinline__ void store_outputs(const float (&acc)[SWIGLU ? 2 : 1][ROWS], __half* y, int n_out, int warp,
                                              int lane) {
  constexpr int kOuts = kWarps / WPO;
  constexpr int kSums = SWIGLU ? 2 : 1;
  __shared__ float partial[kWarps][kSums][ROWS];
#pragma unroll
  for (int s = 0; s < kSums; ++s)
#pragma unroll
    for (int m = 0; m < ROWS; ++m) {
      float v = acc[s][m];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
      if (lane == 0) partial[warp][s][m] = v;
    }
  __syncthreads();
  if (threadIdx.x < kOuts * ROWS) {
    const int out = threadIdx.x / ROWS;
    const int m = threadIdx.x % ROWS;
    const int nn = blockIdx.x * kOuts + out;
    if (nn < n_out) {
      float total[kSums];
#pragma unroll
      for (int s = 0; s < kSums; ++s) {
        total[s] = 0.f;
#pragma unroll
        for (int p = 0; p < WPO; ++p) total[s] += partial[out * WPO + p][s][m];
      }
      const float value = SWIGLU ? swiglu_value(total[0], total[kSums - 1]) : total[0];
      y[static_cast<size_t>(m) * n_out + nn] = __float2half(value);
    }
  }
}

// One 8-value chunk of x + skip, in float16 (what the norm's `sum` output holds; fp32 adds), its
// squares (of the fp32 sums) added to `squares`: skip_norm's first pass and parts_skip_norm_rows'
// (linear_int4.cu) share it, so that both give the same bits.
__device__ __forceinline__ uint4 chunk_sum(const uint4& xv, const uint4& sv, float& squares) {
  const __half2* xh = reinterpret_cast<const __half2*>(&xv);
  const __half2* sh = reinterpret_cast<const __half2*>(&sv);
  uint4 out;
  __half2* oh = reinterpret_cast<__half2*>(&out);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 xf = __half22float2(xh[j]), sf = __half22float2(sh[j]);
    const float2 s = make_float2(xf.x + sf.x, xf.y + sf.y);
    squares += s.x * s.x + s.y * s.y;
    oh[j] = __floats2half2_rn(s.x, s.y);
  }
  return out;
}

// A chunk of x + skip (float16, chunk_sum's) normalized: times the row's `scale` and gamma's chunk,
// rounded to float16 (skip_norm's second pass, and parts_skip_norm_rows').
__device__ __forceinline__ uint4 chunk_normed(const uint4& sv, const uint4& gv, float scale) {
  const __half2* sh = reinterpret_cast<const __half2*>(&sv);
  const __half2* gh = reinterpret_cast<const __half2*>(&gv);
  uint4 out;
  __half2* oh = reinterpret_cast<__half2*>(&out);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 s = __half22float2(sh[j]), g = __half22float2(gh[j]);
    oh[j] = __floats2half2_rn(s.x * scale * g.x, s.y * scale * g.y);
  }
  return out;
}

// xs (ROWS, K) = rms_norm(x + skip) * gamma in float16, the block's threads sharing the work;
// `sum` (when not null) gets x + skip. `a` has x, skip, gamma (float16), k and epsilon.
template <int ROWS, typename Args>
__device__ void skip_norm(const Args& a, __half* xs, __half* sum) {
  const int chunks = a.k / 8;
  float squares[ROWS];
#pragma unroll
  for (int m = 0; m < ROWS; ++m) squares[m] = 0.f;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
#pragma unroll
    for (int m = 0; m < ROWS; ++m) {
      const size_t at = static_cast<size_t>(m) * a.k + 8 * c;
      const uint4 out = chunk_sum(load16(a.x + at), load16(a.skip + at), squares[m]);
      *reinterpret_cast<uint4*>(xs + at) = out;
      if (sum != nullptr) *reinterpret_cast<uint4*>(sum + at) = out;
    }
  }
  block_sums<ROWS>(squares);
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    const uint4 gv = load16(a.gamma + 8 * c);
#pragma unroll
    for (int m = 0; m < ROWS; ++m) {
      uint4* chunk = reinterpret_cast<uint4*>(xs + static_cast<size_t>(m) * a.k + 8 * c);
      *chunk = chunk_normed(*chunk, gv, rms_scale(squares[m], a.k, a.epsilon));
    }
  }
  __syncthreads();
}

// Many rows (prefill, large batches): x + skip and its norm into `normed`, one block a row (either
// family's arguments); block b also writes row b's sum. The kernel after it may start at once (where
// launched as a programmatic dependent launch: the LinearInt4 GEMM then reads its first weights
// while the norm runs, and waits for it before reading x).
template <typename Args>
__global__ void __launch_bounds__(kThreads) skip_norm_rows(Args a, __half* normed) {
  let_next_start();
  Args row = a;
  const size_t at = static_cast<size_t>(blockIdx.x) * a.k;
  row.x += at;
  row.skip += at;
  skip_norm<1>(row, normed + at, a.sum + at);
}

// A family's GEMV launched for a call (linear.cu, linear_int4.cu). Family has `Args` (with n and
// k), `kChunkValues` (K values a 16-byte weight chunk covers), `programmatic` (its kProgrammatic), and
// `kernel<ROWS, WPO, NORM, SWIGLU>()`, the kernel for those template arguments. Warps an output
// from warps_per_output; the norm's rows in dynamic shared memory.
template <class Family, int ROWS, bool NORM, bool SWIGLU>
void launch_gemv(const typename Family::Args& a, cudaStream_t s) {
  const int wpo = warps_per_output(a.n, a.k / Family::kChunkValues);
  const int outs = kWarps / wpo;
  const unsigned blocks = static_cast<unsigned>((a.n + outs - 1) / outs);
  const size_t shared = NORM ? static_cast<size_t>(ROWS) * a.k * sizeof(__half) : 0;
  constexpr bool pdl = Family::programmatic;
  switch (wpo) {
    case 1: launch_kernel<pdl>(Family::template kernel<ROWS, 1, NORM, SWIGLU>(), blocks, shared, s, a); break;
    case 2: launch_kernel<pdl>(Family::template kernel<ROWS, 2, NORM, SWIGLU>(), blocks, shared, s, a); break;
    case 4: launch_kernel<pdl>(Family::template kernel<ROWS, 4, NORM, SWIGLU>(), blocks, shared, s, a); break;
    default: launch_kernel<pdl>(Family::template kernel<ROWS, 8, NORM, SWIGLU>(), blocks, shared, s, a); break;
  }
}

template <class Family, bool NORM, bool SWIGLU>
void launch_gemv_rows(const typename Family::Args& a, int rows, cudaStream_t s) {
  switch (rows) {  // 1 to kGemvRows
    case 1: launch_gemv<Family, 1, NORM, SWIGLU>(a, s); break;
    case 2: launch_gemv<Family, 2, NORM, SWIGLU>(a, s); break;
    case 3: launch_gemv<Family, 3, NORM, SWIGLU>(a, s); break;
    default: launch_gemv<Family, 4, NORM, SWIGLU>(a, s); break;
  }
}

// The GEMV for `rows` (1 to kGemvRows) rows of a call, with or without the norm and SwiGLU.
template <class Family>
void launch_gemv_call(const typename Family::Args& a, int rows, bool norm, bool swiglu, cudaStream_t s) {
  if (norm && swiglu) launch_gemv_rows<Family, true, true>(a, rows, s);
  else if (norm) launch_gemv_rows<Family, true, false>(a, rows, s);
  else if (swiglu) launch_gemv_rows<Family, false, true>(a, rows, s);
  else launch_gemv_rows<Family, false, false>(a, rows, s);
}

// cublasGemmEx from the cuBLAS that onnxruntime's CUDA provider links (its handle is that
// library's): looked up through the provider library, found among the loaded objects; else
// from a cuBLAS already loaded under its usual names.
inline int find_provider(struct dl_phdr_info* info, size_t, void* out) {
  if (info->dlpi_name != nullptr && strstr(info->dlpi_name, "libonnxruntime_providers_cuda") != nullptr) {
    *static_cast<std::string*>(out) = info->dlpi_name;
    return 1;
  }
  return 0;
}

inline cublas::GemmExFn gemm_ex() {
  static const cublas::GemmExFn fn = [] {
    std::string provider;
    dl_iterate_phdr(find_provider, &provider);
    void* lib = provider.empty() ? nullptr : dlopen(provider.c_str(), RTLD_LAZY | RTLD_NOLOAD);
    void* symbol = lib != nullptr ? dlsym(lib, "cublasGemmEx") : nullptr;
    for (const char* name : {"libcublas.so.13", "libcublas.so.12"}) {
      if (symbol != nullptr) break;
      void* loaded = dlopen(name, RTLD_LAZY | RTLD_NOLOAD);
      symbol = loaded != nullptr ? dlsym(loaded, "cublasGemmEx") : nullptr;
    }
    return reinterpret_cast<cublas::GemmExFn>(symbol);
  }();
  return fn;
}

// y (rows, n) = x (rows, k) . w^T on cuBLAS, y's rows `ldy` values apart.
inline const char* gemm(const __half* x, const __half* w, __half* y, int64_t rows, int64_t n, int64_t k, int64_t ldy,
                        void* handle) {
  if (handle == nullptr) return "Linear: onnxruntime gave no cuBLAS handle for its CUDA stream";
  const cublas::GemmExFn fn = gemm_ex();
  if (fn == nullptr) return "Linear: cublasGemmEx was not found through onnxruntime's CUDA provider library";
  const float one = 1.f, zero = 0.f;
  // column-major: y^T (n, rows) = w (stored k x n, transposed) . x^T (k, rows)
  const int status = fn(handle, cublas::kOpT, cublas::kOpN, static_cast<int>(n), static_cast<int>(rows),
                        static_cast<int>(k), &one, w, CUDA_R_16F, static_cast<int>(k), x, CUDA_R_16F,
                        static_cast<int>(k), &zero, y, CUDA_R_16F, static_cast<int>(ldy), cublas::kCompute32F,
                        cublas::kGemmDefault);
  return status == 0 ? nullptr : "Linear: cublasGemmEx failed";
}

inline const char* launched() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace linear_common
