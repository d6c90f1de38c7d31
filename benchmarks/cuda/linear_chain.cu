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
