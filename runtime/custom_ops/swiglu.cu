// SwiGLU on CUDA: x (rows, 2I) float16, gate then up -> y (rows, I), fp32 math inside; two
// outputs a thread (half2 loads) where I is even, one otherwise.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda_kernels.h"
#include "op_math.h"

namespace {

__global__ void swiglu_pairs(const __half2* x, __half2* y, int64_t inter_pairs) {
  const int64_t row = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= inter_pairs) return;
  const float2 gate = __half22float2(x[row * 2 * inter_pairs + i]);
  const float2 up = __half22float2(x[row * 2 * inter_pairs + inter_pairs + i]);
  y[row * inter_pairs + i] = __floats2half2_rn(swiglu_value(gate.x, up.x), swiglu_value(gate.y, up.y));
}

__global__ void swiglu_singles(const __half* x, __half* y, int64_t inter) {
  const int64_t row = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= inter) return;
  const float gate = __half2float(x[row * 2 * inter + i]);
  const float up = __half2float(x[row * 2 * inter + inter + i]);
  y[row * inter + i] = __float2half(swiglu_value(gate, up));
}

}  // namespace

const char* swiglu_cuda(const void* x, void* y, int64_t rows, int64_t inter, void* stream) {
  if (rows > 65535) return "SwiGLU: more than 65535 rows in one call";
  constexpr int kThreads = 256;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (inter % 2 == 0) {
    const int64_t pairs = inter / 2;
    dim3 grid(static_cast<unsigned>((pairs + kThreads - 1) / kThreads), static_cast<unsigned>(rows));
    swiglu_pairs<<<grid, kThreads, 0, s>>>(static_cast<const __half2*>(x), static_cast<__half2*>(y), pairs);
  } else {
    dim3 grid(static_cast<unsigned>((inter + kThreads - 1) / kThreads), static_cast<unsigned>(rows));
    swiglu_singles<<<grid, kThreads, 0, s>>>(static_cast<const __half*>(x), static_cast<__half*>(y), inter);
  }
  const cudaError_t launched = cudaGetLastError();
  return launched == cudaSuccess ? nullptr : cudaGetErrorString(launched);
}
