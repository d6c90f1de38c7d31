// The CUDA entry points of a build without nvcc: the library then has CPU kernels only.
#include "cuda_kernels.h"

bool has_cuda_kernels() { return false; }

namespace {
const char* kNoCuda = "this build of the optimizer.ops library has no CUDA kernels (nvcc was not found)";
}

const char* swiglu_cuda(const void*, void*, int64_t, int64_t, void*) { return kNoCuda; }

int64_t linear_scratch_elements(const LinearCall&) { return 0; }

const char* linear_cuda(const LinearCall&, void*, void*) { return kNoCuda; }

int64_t linear_int4_scratch_elements(const LinearCall&, const Int4Weights&) { return 0; }

const char* linear_int4_cuda(const LinearCall&, const Int4Weights&, void*, void*) { return kNoCuda; }

int64_t linear_int4_chain_scratch_elements(const LinearCall&, const Int4Weights&, const LinearCall&,
                                           const Int4Weights&) {
  return 0;
}

const char* linear_int4_chain_cuda(const LinearCall&, const Int4Weights&, const LinearCall&, const Int4Weights&, void*,
                                   void*) {
  return kNoCuda;
}

const char* attention_cuda(const AttentionCall&, void*) { return kNoCuda; }
