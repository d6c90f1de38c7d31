// onnxruntime custom ops of the optimizer.ops domain, for the CPU and (built with nvcc, with
// swiglu.cu; swiglu_none.cc otherwise) the CUDA execution provider. onnxruntime loads this library through
// SessionOptions.register_custom_ops_library and calls RegisterCustomOps.
//
//   SwiGLU(x) -> y    x: (..., 2I) float16, gate then up; y: (..., I) = silu(gate) * up
//
// The CUDA kernel runs on onnxruntime's compute stream, so a captured CUDA graph records it.
#include <string.h>

#include <vector>

#include "ort_abi.h"
#include "swiglu.h"

namespace {

constexpr const char* kDomain = "optimizer.ops";

struct Kernel {
  OrtApiTable api;
  bool cuda;
};

OrtStatus* error(OrtApiTable api, const char* message) {
  return ort::api_fn<ort::CreateStatusFn>(api, ort::kCreateStatus)(ort::kInvalidArgument, message);
}

#define ORT_RETURN_IF_ERROR(expr)        \
  do {                                   \
    OrtStatus* status_ = (expr);         \
    if (status_ != nullptr) return status_; \
  } while (0)

OrtStatus* input_shape(OrtApiTable api, const OrtValue* value, std::vector<int64_t>* dims) {
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

void swiglu_cpu(const _Float16* x, _Float16* y, int64_t rows, int64_t inter) {
  for (int64_t r = 0; r < rows; ++r) {
    const _Float16* gate = x + r * 2 * inter;
    const _Float16* up = gate + inter;
    for (int64_t i = 0; i < inter; ++i) {
      float g = static_cast<float>(gate[i]);
      y[r * inter + i] = static_cast<_Float16>(swiglu_value(g, static_cast<float>(up[i])));
    }
  }
}

OrtStatus* swiglu_compute(void* opaque, OrtKernelContext* context) {
  const Kernel* kernel = static_cast<const Kernel*>(opaque);
  OrtApiTable api = kernel->api;
  const OrtValue* x = nullptr;
  ORT_RETURN_IF_ERROR(ort::api_fn<ort::KernelContextGetInputFn>(api, ort::kKernelContextGetInput)(context, 0, &x));
  std::vector<int64_t> dims;
  ORT_RETURN_IF_ERROR(input_shape(api, x, &dims));
  if (dims.empty() || dims.back() % 2 != 0) {
    return error(api, "SwiGLU: the input's last dimension must be even (gate then up, each half of it)");
  }
  const int64_t inter = dims.back() / 2;
  int64_t rows = 1;
  for (size_t d = 0; d + 1 < dims.size(); ++d) rows *= dims[d];
  dims.back() = inter;
  OrtValue* y = nullptr;
  ORT_RETURN_IF_ERROR(ort::api_fn<ort::KernelContextGetOutputFn>(api, ort::kKernelContextGetOutput)(
      context, 0, dims.data(), dims.size(), &y));
  void* x_data = nullptr;
  void* y_data = nullptr;
  auto data = ort::api_fn<ort::GetTensorMutableDataFn>(api, ort::kGetTensorMutableData);
  ORT_RETURN_IF_ERROR(data(const_cast<OrtValue*>(x), &x_data));
  ORT_RETURN_IF_ERROR(data(y, &y_data));
  if (rows == 0 || inter == 0) return nullptr;
  if (!kernel->cuda) {
    swiglu_cpu(static_cast<const _Float16*>(x_data), static_cast<_Float16*>(y_data), rows, inter);
    return nullptr;
  }
  void* stream = nullptr;
  ORT_RETURN_IF_ERROR(ort::api_fn<ort::KernelContextGetGPUComputeStreamFn>(
      api, ort::kKernelContextGetGPUComputeStream)(context, &stream));
  const char* failure = swiglu_cuda(x_data, y_data, rows, inter, stream);
  return failure == nullptr ? nullptr : error(api, failure);
}

// The callbacks onnxruntime reads; `cuda` picks the execution provider.
template <bool cuda>
struct SwiGLU {
  static const char* name(const ort::CustomOp*) { return "SwiGLU"; }
  static const char* provider(const ort::CustomOp*) { return cuda ? "CUDAExecutionProvider" : "CPUExecutionProvider"; }
  static int float16(const ort::CustomOp*, size_t) { return ort::kFloat16; }
  static size_t one(const ort::CustomOp*) { return 1; }
  static int required(const ort::CustomOp*, size_t) { return 0; }      // INPUT_OUTPUT_REQUIRED
  static int default_memory(const ort::CustomOp*, size_t) { return 0; }  // OrtMemTypeDefault
  static int arity(const ort::CustomOp*) { return 1; }
  static void* create(const ort::CustomOp*, OrtApiTable api, const OrtKernelInfo*) { return new Kernel{api, cuda}; }
  static OrtStatus* create_v2(const ort::CustomOp*, OrtApiTable api, const OrtKernelInfo*, void** kernel) {
    *kernel = new Kernel{api, cuda};
    return nullptr;
  }
  static void compute_v1(void*, OrtKernelContext*) {}  // never called: version 16 runs KernelComputeV2
  static void destroy(void* kernel) { delete static_cast<Kernel*>(kernel); }

  static ort::CustomOp make() {
    ort::CustomOp op;
    memset(&op, 0, sizeof(op));
    op.version = ort::kCustomOpVersion;
    op.CreateKernel = create;
    op.GetName = name;
    op.GetExecutionProviderType = provider;
    op.GetInputType = float16;
    op.GetInputTypeCount = one;
    op.GetOutputType = float16;
    op.GetOutputTypeCount = one;
    op.KernelCompute = compute_v1;
    op.KernelDestroy = destroy;
    op.GetInputCharacteristic = required;
    op.GetOutputCharacteristic = required;
    op.GetInputMemoryType = default_memory;
    op.GetVariadicInputMinArity = arity;
    op.GetVariadicInputHomogeneity = arity;
    op.GetVariadicOutputMinArity = arity;
    op.GetVariadicOutputHomogeneity = arity;
    op.CreateKernelV2 = create_v2;
    op.KernelComputeV2 = swiglu_compute;
    return op;
  }
};

ort::CustomOp swiglu_cpu_op = SwiGLU<false>::make();
ort::CustomOp swiglu_cuda_op = SwiGLU<true>::make();

}  // namespace

extern "C" {

// "cpu" or "cpu,cuda": the providers this build has kernels for (read by runtime.custom_ops).
const char* optimizer_ops_providers() { return swiglu_has_cuda() ? "cpu,cuda" : "cpu"; }

OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  OrtApiTable api = base->GetApi(ort::kApiVersion);
  if (api == nullptr) {  // onnxruntime older than the API this library calls: say so through its first API
    OrtApiTable first = base->GetApi(1);
    return ort::api_fn<ort::CreateStatusFn>(first, ort::kCreateStatus)(
        ort::kFail, "the optimizer.ops library needs onnxruntime 1.16 or newer");
  }
  OrtCustomOpDomain* domain = nullptr;  // kept for the process: sessions made later use it
  ORT_RETURN_IF_ERROR(ort::api_fn<ort::CreateCustomOpDomainFn>(api, ort::kCreateCustomOpDomain)(kDomain, &domain));
  auto add = ort::api_fn<ort::CustomOpDomainAddFn>(api, ort::kCustomOpDomainAdd);
  ORT_RETURN_IF_ERROR(add(domain, &swiglu_cpu_op));
  if (swiglu_has_cuda()) ORT_RETURN_IF_ERROR(add(domain, &swiglu_cuda_op));
  return ort::api_fn<ort::AddCustomOpDomainFn>(api, ort::kAddCustomOpDomain)(options, domain);
}

}  // extern "C"
