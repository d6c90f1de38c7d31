// The product's Linear family (runtime/custom_ops/linear.cu) behind a C entry point, for
// benchmarks/gpu_gemv_chain.py: one call as the custom op makes it, on `stream`.
#include <string.h>

#include "cuda_kernels.h"

// 0 on success; 1 with the reason in `error`.
extern "C" int chain_linear(const void* x, const void* skip, const void* gamma, const void* w, void* y, void* sum,
                            long long rows, long long n, long long k, float epsilon, int norm, int swiglu,
                            void* stream, char* error, int error_size) {
  LinearCall call{x, skip, gamma, w, y, sum, nullptr, rows, n, k, epsilon, norm != 0, swiglu != 0};
  if (linear_scratch_elements(call) != 0) {
    strncpy(error, "the call needs a scratch: more rows than the GEMV takes", error_size - 1);
    return 1;
  }
  const char* failure = linear_cuda(call, stream, nullptr);
  if (failure == nullptr) return 0;
  strncpy(error, failure, error_size - 1);
  return 1;
}

// The same with 4-bit weights (runtime/custom_ops/linear_int4.cu): codes, scales and optional
// zero points in onnxruntime MatMulNBits' layout, quantization blocks of `block`.
extern "C" int chain_linear_int4(const void* x, const void* skip, const void* gamma, const void* codes,
                                 const void* scales, const void* zeros, void* y, void* sum, long long rows, long long n,
                                 long long k, long long block, float epsilon, int norm, int swiglu, void* stream,
                                 char* error, int error_size) {
  LinearCall call{x, skip, gamma, nullptr, y, sum, nullptr, rows, n, k, epsilon, norm != 0, swiglu != 0};
  const Int4Weights weights{codes, scales, zeros, block};
  if (linear_int4_scratch_elements(call, weights) != 0) {
    strncpy(error, "the call needs a scratch: more rows than the GEMV takes", error_size - 1);
    return 1;
  }
  const char* failure = linear_int4_cuda(call, weights, stream, nullptr);
  if (failure == nullptr) return 0;
  strncpy(error, failure, error_size - 1);
  return 1;
}
