// What the ops' kernels share: the kernel state onnxruntime hands back to each call, and small
// wrappers of the onnxruntime C API slots they use (ort_abi.h).
#pragma once
#include <stdint.h>

#include <vector>

#include "ort_abi.h"

namespace optimizer_ops {

struct Kernel;
using ComputeFn = OrtStatus* (*)(const Kernel& kernel, OrtKernelContext* context);

// What a Linear-family op adds to x . w^T, and whether its weights are 4-bit (LinearInt4 family;
// the LinearInt4NormLinearInt4 ops are its norm kinds with a compute function of their own).
struct LinearKind {
  bool norm;
  bool swiglu;
  bool int4;
};

// CachedAttention's attributes.
struct AttentionAttrs {
  int64_t heads;
  int64_t kv_heads;
  int64_t window;  // local_window_size; <= 0: none
  float scale;     // 0: 1 / sqrt(head_dim)
  float softcap;   // 0: none
};

struct Kernel {
  OrtApiTable api;
  const char* name;  // the op's, for its error messages
  bool cuda;
  ComputeFn compute;
  LinearKind kind;
  float epsilon;  // the norm's
  int64_t block;  // the 4-bit weights' quantization block
  AttentionAttrs attention;
};

inline OrtStatus* error(OrtApiTable api, const char* message) {
  return ort::api_fn<ort::CreateStatusFn>(api, ort::kCreateStatus)(ort::kInvalidArgument, message);
}

#define ORT_RETURN_IF_ERROR(expr)        \
  do {                                   \
    OrtStatus* status_ = (expr);         \
    if (status_ != nullptr) return status_; \
  } while (0)

inline OrtStatus* input(const Kernel& kernel, OrtKernelContext* context, size_t index, const OrtValue** value) {
  return ort::api_fn<ort::KernelContextGetInputFn>(kernel.api, ort::kKernelContextGetInput)(context, index, value);
}

inline OrtStatus* shape(OrtApiTable api, const OrtValue* value, std::vector<int64_t>* dims) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  ORT_RETURN_IF_ERROR(ort::api_fn<ort::GetTensorTypeAndShapeFn>(api, ort::kGetTensorTypeAndShape)(value, &info));
  size_t rank = 0;
  OrtStatus* status = ort::api_fn<ort::GetDimensionsCountFn>(api, ort::kGetDimensionsCount)(info, &rank);
  if (status == nullptr) {
    dims->resize(rank);
    status = ort::api_fn<ort::GetDimensionsFn>(api, ort::kGetDimensions)(info, dims->data(), rank);
  }
  ort::api_fn<ort::ReleaseTensorTypeAndShapeInfoFn>(api, ort::kReleaseTensorTypeAndShapeInfo)(info);
  return status;
}

inline OrtStatus* output(const Kernel& kernel, OrtKernelContext* context, const std::vector<int64_t>& dims, OrtValue** value,
                  size_t index = 0) {
  return ort::api_fn<ort::KernelContextGetOutputFn>(kernel.api, ort::kKernelContextGetOutput)(
      context, index, dims.data(), dims.size(), value);
}

inline OrtStatus* data(const Kernel& kernel, const OrtValue* value, void** out) {
  return ort::api_fn<ort::GetTensorMutableDataFn>(kernel.api, ort::kGetTensorMutableData)(
      const_cast<OrtValue*>(value), out);
}

inline OrtStatus* stream(const Kernel& kernel, OrtKernelContext* context, void** out) {
  return ort::api_fn<ort::KernelContextGetGPUComputeStreamFn>(kernel.api, ort::kKernelContextGetGPUComputeStream)(
      context, out);
}

inline int64_t leading_rows(const std::vector<int64_t>& dims) {
  int64_t rows = 1;
  for (size_t d = 0; d + 1 < dims.size(); ++d) rows *= dims[d];
  return rows;
}

// The ops' compute functions (swiglu_op.cc, linear_op.cc, linear_int4_op.cc, attention_op.cc).
OrtStatus* swiglu_compute(const Kernel& kernel, OrtKernelContext* context);
OrtStatus* linear_compute(const Kernel& kernel, OrtKernelContext* context);
OrtStatus* linear_int4_compute(const Kernel& kernel, OrtKernelContext* context);
OrtStatus* linear_int4_chain_compute(const Kernel& kernel, OrtKernelContext* context);
OrtStatus* attention_compute(const Kernel& kernel, OrtKernelContext* context);

inline OrtStatus* inputs_given(const Kernel& kernel, OrtKernelContext* context, size_t* count) {
  return ort::api_fn<ort::KernelContextGetInputCountFn>(kernel.api, ort::kKernelContextGetInputCount)(context, count);
}

// SwiGLU's CPU loop over (rows, 2I) -> (rows, I), which LinearSwiGLU's CPU kernel uses too.
void swiglu_rows_cpu(const _Float16* x, _Float16* y, int64_t rows, int64_t inter);

}  // namespace optimizer_ops
