// SwiGLU's math, shared by the CPU loop and the CUDA kernel, and the CUDA entry points.
#pragma once
#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define SWIGLU_HD __host__ __device__
#else
#define SWIGLU_HD
#endif

// silu(gate) * up in fp32: gate / (1 + exp(-gate)) * up.
SWIGLU_HD inline float swiglu_value(float gate, float up) { return gate / (1.0f + expf(-gate)) * up; }

// Whether this build has the CUDA kernel; launch it on `stream` (a cudaStream_t): null, or why not.
bool swiglu_has_cuda();
const char* swiglu_cuda(const void* x, void* y, int64_t rows, int64_t inter, void* stream);
