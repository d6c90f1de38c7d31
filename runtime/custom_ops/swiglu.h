// SwiGLU's math, shared by the CPU loop and the CUDA kernel.
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
