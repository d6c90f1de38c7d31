// SwiGLU(x) -> y: x (..., 2I) float16, gate then up; y (..., I) = silu(gate) * up, fp32 math.
// The CPU loop here; the CUDA kernel in swiglu.cu.
#include "cuda_kernels.h"
#include "kernel_context.h"
#include "op_math.h"

namespace optimizer_ops {

void swiglu_rows_cpu(const _Float16* x, _Float16* y, int64_t rows, int64_t inter) {
  for (int64_t r = 0; r < rows; ++r) {
    const _Float16* gate = x + r * 2 * inter;
    const _Float16* up = gate + inter;
    for (int64_t i = 0; i < inter; ++i) {
      y[r * inter + i] = static_cast<_Float16>(swiglu_value(static_cast<float>(gate[i]), static_cast<float>(up[i])));
    }
  }
}

OrtStatus* swiglu_compute(const Kernel& kernel, OrtKernelContext* context) {
  const OrtValue* x = nullptr;
  ORT_RETURN_IF_ERROR(input(kernel, context, 0, &x));
  std::vector<int64_t> dims;
  ORT_RETURN_IF_ERROR(shape(kernel.api, x, &dims));
  if (dims.empty() || dims.back() % 2 != 0) {
    return error(kernel.api, "SwiGLU: the input's last dimension must be even (gate then up, each half of it)");
  }
  const int64_t inter = dims.back() / 2;
  const int64_t rows = leading_rows(dims);
  dims.back() = inter;
  OrtValue* y = nullptr;
  ORT_RETURN_IF_ERROR(output(kernel, context, dims, &y));
  void* x_data = nullptr;
  void* y_data = nullptr;
  ORT_RETURN_IF_ERROR(data(kernel, x, &x_data));
  ORT_RETURN_IF_ERROR(data(kernel, y, &y_data));
  if (rows == 0 || inter == 0) return nullptr;
  if (!kernel.cuda) {
    swiglu_rows_cpu(static_cast<const _Float16*>(x_data), static_cast<_Float16*>(y_data), rows, inter);
    return nullptr;
  }
  void* s = nullptr;
  ORT_RETURN_IF_ERROR(stream(kernel, context, &s));
  const char* failure = swiglu_cuda(x_data, y_data, rows, inter, s);
  return failure == nullptr ? nullptr : error(kernel.api, failure);
}

}  // namespace optimizer_ops
