// The ops' elementwise math, shared by the CPU loops and the CUDA kernels (fp32).
#pragma once
#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define OP_MATH_HD __host__ __device__
#else
#define OP_MATH_HD
#endif

// silu(gate) * up: gate / (1 + exp(-gate)) * up.
OP_MATH_HD inline float swiglu_value(float gate, float up) { return gate / (1.0f + expf(-gate)) * up; }

// RMS norm's scale for a row of `k` values whose squares sum to `squares`: 1 / sqrt(mean + epsilon).
OP_MATH_HD inline float rms_scale(float squares, int64_t k, float epsilon) {
  return 1.0f / sqrtf(squares / static_cast<float>(k) + epsilon);
}
