// The CUDA entry points of a build without nvcc: the library then has CPU kernels only.
#include "swiglu.h"

bool swiglu_has_cuda() { return false; }

const char* swiglu_cuda(const void*, void*, int64_t, int64_t, void*) {
  return "SwiGLU: this build of the optimizer.ops library has no CUDA kernels (nvcc was not found)";
}
