// The one cuBLAS function the Linear op calls, declared here (the CUDA toolkit's cuBLAS headers
// are not needed to build the library): cublasGemmEx, its enum arguments passed as the ints the
// C ABI carries, with the values cublas_api.h gives them. cudaDataType comes from the CUDA
// runtime's library_types.h.
#pragma once

namespace cublas {

enum Operation : int { kOpN = 0, kOpT = 1 };
constexpr int kCompute32F = 68;   // CUBLAS_COMPUTE_32F: fp32 accumulation
constexpr int kGemmDefault = -1;  // CUBLAS_GEMM_DEFAULT: cuBLAS picks the kernel

// cublasStatus_t cublasGemmEx(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype,
//                             ldb, beta, C, Ctype, ldc, computeType, algo); 0 is success.
using GemmExFn = int (*)(void* handle, int transa, int transb, int m, int n, int k, const void* alpha, const void* a,
                         int a_type, int lda, const void* b, int b_type, int ldb, const void* beta, void* c, int c_type,
                         int ldc, int compute_type, int algo);

}  // namespace cublas
