// Linear on CUDA: y (rows, N) = x (rows, K) . w^T, w stored (N, K) row-major, float16 in and out,
// fp32 sums.
//
// Up to kGemvRows rows (decode) our GEMV kernel: the weight read once with 16-byte loads, each
// output's K split over 1-8 warps of a block so that small projections still fill the GPU (cuBLAS
// reads the 1B shape's qkv / o / down at 1.2-2.9 TB/s at one row: run8 / run10). More rows (prefill,
// large decode batches), or a K / alignment the GEMV does not take: cuBLAS's GemmEx on
// onnxruntime's own handle for the stream, the call onnxruntime's MatMul makes, so it is captured
// into decode graphs as theirs is.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <link.h>
#include <library_types.h>
#include <string.h>

#include <string>

#include "cublas_abi.h"
#include "cuda_kernels.h"

namespace {

constexpr int kGemvRows = 4;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr long kTargetWarps = 8192;  // enough resident warps to keep an H100 / H200's memory busy

// One block: kWarps / WPO outputs, each summed by WPO warps over interleaved 16-byte chunks of K.
template <int ROWS, int WPO>
__global__ void __launch_bounds__(kThreads) gemv(const __half* __restrict__ x, const __half* __restrict__ w,
                                                 __half* __restrict__ y, int n_out, int k) {
  constexpr int kOuts = kWarps / WPO;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * kOuts + warp / WPO;
  const int part = warp % WPO;
  float acc[ROWS];
#pragma unroll
  for (int m = 0; m < ROWS; ++m) acc[m] = 0.f;
  if (n < n_out) {
    const uint4* w_row = reinterpret_cast<const uint4*>(w + static_cast<size_t>(n) * k);
    const int chunks = k / 8;
#pragma unroll 4
    for (int c = part * 32 + lane; c < chunks; c += 32 * WPO) {
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
  }
  __shared__ float partial[kWarps][ROWS];
#pragma unroll
  for (int m = 0; m < ROWS; ++m) {
    float v = acc[m];
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) partial[warp][m] = v;
  }
  __syncthreads();
  if (threadIdx.x < kOuts * ROWS) {
    const int out = threadIdx.x / ROWS;
    const int m = threadIdx.x % ROWS;
    const int nn = blockIdx.x * kOuts + out;
    if (nn < n_out) {
      float sum = 0.f;
#pragma unroll
      for (int p = 0; p < WPO; ++p) sum += partial[out * WPO + p][m];
      y[static_cast<size_t>(m) * n_out + nn] = __float2half(sum);
    }
  }
}

// Warps an output: the most (1, 2, 4, 8) that keep all warps within kTargetWarps, while each
// warp still has a 16-byte chunk a lane.
int warps_per_output(long n, long k) {
  int wpo = 1;
  while (wpo < kWarps && n * wpo * 2 <= kTargetWarps && k / 8 >= 64L * wpo) wpo *= 2;
  return wpo;
}

template <int ROWS>
void launch_rows(const __half* x, const __half* w, __half* y, int n, int k, cudaStream_t s) {
  const int wpo = warps_per_output(n, k);
  const int outs = kWarps / wpo;
  const unsigned blocks = static_cast<unsigned>((n + outs - 1) / outs);
  switch (wpo) {
    case 1: gemv<ROWS, 1><<<blocks, kThreads, 0, s>>>(x, w, y, n, k); break;
    case 2: gemv<ROWS, 2><<<blocks, kThreads, 0, s>>>(x, w, y, n, k); break;
    case 4: gemv<ROWS, 4><<<blocks, kThreads, 0, s>>>(x, w, y, n, k); break;
    default: gemv<ROWS, 8><<<blocks, kThreads, 0, s>>>(x, w, y, n, k); break;
  }
}

bool gemv_takes(int64_t rows, int64_t k, const void* x, const void* w) {
  return rows <= kGemvRows && k % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

// cublasGemmEx from the cuBLAS that onnxruntime's CUDA provider links (its handle is that
// library's): looked up through the provider library, found among the loaded objects; else
// from a cuBLAS already loaded under its usual names.
int find_provider(struct dl_phdr_info* info, size_t, void* out) {
  if (info->dlpi_name != nullptr && strstr(info->dlpi_name, "libonnxruntime_providers_cuda") != nullptr) {
    *static_cast<std::string*>(out) = info->dlpi_name;
    return 1;
  }
  return 0;
}

cublas::GemmExFn gemm_ex() {
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

const char* gemm(const void* x, const void* w, void* y, int64_t rows, int64_t n, int64_t k, void* handle) {
  if (handle == nullptr) return "Linear: onnxruntime gave no cuBLAS handle for its CUDA stream";
  const cublas::GemmExFn fn = gemm_ex();
  if (fn == nullptr) return "Linear: cublasGemmEx was not found through onnxruntime's CUDA provider library";
  if (rows > INT32_MAX || n > INT32_MAX || k > INT32_MAX) return "Linear: a dimension over 2^31 - 1";
  const float one = 1.f, zero = 0.f;
  // column-major: y^T (N, rows) = w (stored K x N, transposed) . x^T (K, rows)
  const int status = fn(handle, cublas::kOpT, cublas::kOpN, static_cast<int>(n), static_cast<int>(rows),
                        static_cast<int>(k), &one, w, CUDA_R_16F, static_cast<int>(k), x, CUDA_R_16F,
                        static_cast<int>(k), &zero, y, CUDA_R_16F, static_cast<int>(n), cublas::kCompute32F,
                        cublas::kGemmDefault);
  return status == 0 ? nullptr : "Linear: cublasGemmEx failed";
}

}  // namespace

bool has_cuda_kernels() { return true; }

const char* linear_cuda(const void* x, const void* w, void* y, int64_t rows, int64_t n, int64_t k, void* stream,
                        void* cublas) {
  if (!gemv_takes(rows, k, x, w) || n > INT32_MAX || k > INT32_MAX) return gemm(x, w, y, rows, n, k, cublas);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const __half* xh = static_cast<const __half*>(x);
  const __half* wh = static_cast<const __half*>(w);
  __half* yh = static_cast<__half*>(y);
  const int ni = static_cast<int>(n), ki = static_cast<int>(k);
  switch (rows) {
    case 1: launch_rows<1>(xh, wh, yh, ni, ki, s); break;
    case 2: launch_rows<2>(xh, wh, yh, ni, ki, s); break;
    case 3: launch_rows<3>(xh, wh, yh, ni, ki, s); break;
    default: launch_rows<4>(xh, wh, yh, ni, ki, s); break;
  }
  const cudaError_t launched = cudaGetLastError();
  return launched == cudaSuccess ? nullptr : cudaGetErrorString(launched);
}
