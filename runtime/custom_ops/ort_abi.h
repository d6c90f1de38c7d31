// The parts of onnxruntime's C ABI this library uses, declared here (no onnxruntime header is
// needed to build it). onnxruntime's C API is a table of function pointers (OrtApi) whose order
// is fixed and only ever appended to, so a slot's index names a function in every release since
// it was added; `api_fn` casts a slot to its signature. OrtCustomOp is the table of callbacks a
// custom op hands to onnxruntime; its `version` tells onnxruntime how many fields to read.
#pragma once
#include <stddef.h>
#include <stdint.h>

extern "C" {
typedef struct OrtStatus OrtStatus;
typedef struct OrtValue OrtValue;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef const void* const* OrtApiTable;

struct OrtApiBase {
  OrtApiTable (*GetApi)(uint32_t version);
  const char* (*GetVersionString)(void);
};
}

namespace ort {

// ONNX TensorProto element types and onnxruntime's error codes, as the ABI passes them.
enum ElementType : int { kFloat = 1, kUint8 = 2, kInt32 = 6, kFloat16 = 10 };
enum ErrorCode : int { kOk = 0, kFail = 1, kInvalidArgument = 2 };

// The API version asked for: every slot below exists from it on.
constexpr uint32_t kApiVersion = 16;

// Slot indices in OrtApi.
enum Slot : int {
  kCreateStatus = 0,
  kCreateCustomOpDomain = 26,
  kCustomOpDomainAdd = 27,
  kAddCustomOpDomain = 28,
  kGetTensorMutableData = 51,
  kGetDimensionsCount = 61,
  kGetDimensions = 62,
  kGetTensorTypeAndShape = 65,
  kKernelInfoGetAttributeFloat = 85,
  kKernelInfoGetAttributeInt64 = 86,
  kKernelContextGetInputCount = 88,
  kKernelContextGetInput = 90,
  kKernelContextGetOutput = 91,
  kReleaseStatus = 93,
  kReleaseTensorTypeAndShapeInfo = 99,
  kKernelContextGetGPUComputeStream = 193,
  kKernelContextGetResource = 265,
};

// KernelContext_GetResource's ids of the CUDA provider's per-stream resources (cuda_resource.h:
// from 10000 on, the stream, the cuDNN handle, the cuBLAS handle); any resource version from 1
// on names them.
constexpr int kCudaResourceVersion = 1;
constexpr int kCudaCublasHandle = 10002;

template <typename Fn>
inline Fn api_fn(OrtApiTable api, Slot slot) { return reinterpret_cast<Fn>(const_cast<void*>(api[slot])); }

using CreateStatusFn = OrtStatus* (*)(int code, const char* message);
using CreateCustomOpDomainFn = OrtStatus* (*)(const char* domain, OrtCustomOpDomain** out);
using CustomOpDomainAddFn = OrtStatus* (*)(OrtCustomOpDomain* domain, const void* op);
using AddCustomOpDomainFn = OrtStatus* (*)(OrtSessionOptions* options, OrtCustomOpDomain* domain);
using GetTensorMutableDataFn = OrtStatus* (*)(OrtValue* value, void** out);
using GetDimensionsCountFn = OrtStatus* (*)(const OrtTensorTypeAndShapeInfo* info, size_t* out);
using GetDimensionsFn = OrtStatus* (*)(const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t count);
using GetTensorTypeAndShapeFn = OrtStatus* (*)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out);
using KernelInfoGetAttributeFloatFn = OrtStatus* (*)(const OrtKernelInfo* info, const char* name, float* out);
using KernelInfoGetAttributeInt64Fn = OrtStatus* (*)(const OrtKernelInfo* info, const char* name, int64_t* out);
using KernelContextGetInputCountFn = OrtStatus* (*)(const OrtKernelContext* context, size_t* out);
using KernelContextGetInputFn = OrtStatus* (*)(const OrtKernelContext* context, size_t index, const OrtValue** out);
using KernelContextGetOutputFn = OrtStatus* (*)(OrtKernelContext* context, size_t index, const int64_t* dims,
                                                size_t count, OrtValue** out);
using ReleaseStatusFn = void (*)(OrtStatus* status);
using ReleaseTensorTypeAndShapeInfoFn = void (*)(OrtTensorTypeAndShapeInfo* info);
using KernelContextGetGPUComputeStreamFn = OrtStatus* (*)(const OrtKernelContext* context, void** out);
using KernelContextGetResourceFn = OrtStatus* (*)(const OrtKernelContext* context, int version, int id, void** out);

// OrtCustomOp: a version, then 25 callbacks in this order. Version 16 makes onnxruntime read the
// fields through KernelComputeV2 (kernels created and run with a status to report errors); the
// later ones stay null.
struct CustomOp {
  uint32_t version;
  void* (*CreateKernel)(const CustomOp* op, OrtApiTable api, const OrtKernelInfo* info);
  const char* (*GetName)(const CustomOp* op);
  const char* (*GetExecutionProviderType)(const CustomOp* op);
  int (*GetInputType)(const CustomOp* op, size_t index);
  size_t (*GetInputTypeCount)(const CustomOp* op);
  int (*GetOutputType)(const CustomOp* op, size_t index);
  size_t (*GetOutputTypeCount)(const CustomOp* op);
  void (*KernelCompute)(void* kernel, OrtKernelContext* context);
  void (*KernelDestroy)(void* kernel);
  int (*GetInputCharacteristic)(const CustomOp* op, size_t index);
  int (*GetOutputCharacteristic)(const CustomOp* op, size_t index);
  int (*GetInputMemoryType)(const CustomOp* op, size_t index);
  int (*GetVariadicInputMinArity)(const CustomOp* op);
  int (*GetVariadicInputHomogeneity)(const CustomOp* op);
  int (*GetVariadicOutputMinArity)(const CustomOp* op);
  int (*GetVariadicOutputHomogeneity)(const CustomOp* op);
  OrtStatus* (*CreateKernelV2)(const CustomOp* op, OrtApiTable api, const OrtKernelInfo* info, void** kernel);
  OrtStatus* (*KernelComputeV2)(void* kernel, OrtKernelContext* context);
  void* InferOutputShapeFn;
  void* GetStartVersion;
  void* GetEndVersion;
  void* GetMayInplace;
  void* ReleaseMayInplace;
  void* GetAliasMap;
  void* ReleaseAliasMap;
};

constexpr uint32_t kCustomOpVersion = 16;

}  // namespace ort
