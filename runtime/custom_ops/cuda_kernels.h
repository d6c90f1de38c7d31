// The CUDA entry points of the library (swiglu.cu, linear.cu; cuda_none.cc in a build without
// nvcc, whose library then has CPU kernels only). Each launches on `stream`, onnxruntime's
// compute stream (a cudaStream_t), and returns null, or why it could not.
#pragma once
#include <stdint.h>

// Whether this build has the CUDA kernels.
bool has_cuda_kernels();

// SwiGLU: x (rows, 2I) gate then up -> y (rows, I).
const char* swiglu_cuda(const void* x, void* y, int64_t rows, int64_t inter, void* stream);

// Linear: y (rows, N) = x (rows, K) . w^T, w (N, K); `cublas` is onnxruntime's cuBLAS handle
// for this stream (taken for more rows than the GEMV kernel takes).
const char* linear_cuda(const void* x, const void* w, void* y, int64_t rows, int64_t n, int64_t k, void* stream,
                        void* cublas);
