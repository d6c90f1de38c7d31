// What the Linear families' host code shares (linear_op.cc defines it; linear_int4_op.cc uses it
// too): the CPU kernels' float conversion, dot product, thread split and skip norm, and the
// inputs and outputs every op of the families has (x, with a norm skip and gamma; y, with a norm
// the sum, and the CUDA kernels' scratch).
#pragma once
#include <stdint.h>

#include <functional>
#include <string>
#include <vector>

#include "cuda_kernels.h"
#include "kernel_context.h"

namespace optimizer_ops {

// float16 -> float, `count` values.
void to_float(const _Float16* in, float* out, int64_t count);

// The sum of a[i] * b[i], fp32.
float dot(const float* a, const float* b, int64_t count);

// columns(begin, end) over [0, n), split over the CPU's threads where `work` (multiply-adds)
// is large enough to pay for them.
void for_columns(int64_t n, int64_t work, const std::function<void(int64_t, int64_t)>& columns);

// sum = x + skip; normed = rms_norm(sum) * gamma, both rounded to float16 as the CUDA kernels do.
void skip_norm_cpu(const _Float16* x, const _Float16* skip, const _Float16* gamma, _Float16* sum, _Float16* normed,
                   int64_t rows, int64_t k, float epsilon);

// y (rows, n) = h (rows, k) . w^T for the op's weights: its `n` rows of them.
using Projection = std::function<void(const _Float16* h, _Float16* y, int64_t n)>;

// A call of either family on the CPU: the norm (into a buffer), then `project`, with SwiGLU
// over the gate and up rows' outputs.
void family_cpu(const LinearCall& call, const Projection& project);

struct FamilyInputs {
  const OrtValue* x = nullptr;
  const OrtValue* skip = nullptr;
  const OrtValue* gamma = nullptr;
  std::vector<int64_t> dims;  // x's
};

// x, and with a norm skip and gamma, checked against each other: `why` says what is wrong
// (empty when nothing is); the status only for onnxruntime's own failures.
OrtStatus* family_inputs(const Kernel& kernel, OrtKernelContext* context, FamilyInputs* in, std::string* why);

// The call's sizes and flags for `n` outputs (its pointers set by family_outputs).
LinearCall family_call(const Kernel& kernel, const FamilyInputs& in, int64_t n);

// The scratch a call needs on CUDA: asked once the call's pointers are all set (whether the GEMV
// takes it depends on their alignment).
using ScratchSize = std::function<int64_t(const LinearCall& call)>;

// y (x's shape, n last) and with a norm the sum; their data and the inputs' into `call`; then,
// where the op has one, the scratch of scratch_elements(call) values (on CUDA; empty on the CPU).
OrtStatus* family_outputs(const Kernel& kernel, OrtKernelContext* context, const FamilyInputs& in,
                          const ScratchSize& scratch_elements, LinearCall* call);

// onnxruntime's CUDA stream and its cuBLAS handle for this call.
OrtStatus* cuda_handles(const Kernel& kernel, OrtKernelContext* context, void** stream, void** cublas);

}  // namespace optimizer_ops
