// onnxruntime custom ops of the optimizer.ops domain, for the CPU and (built with nvcc, with
// swiglu.cu and linear.cu; cuda_none.cc otherwise) the CUDA execution provider. onnxruntime loads
// this library through SessionOptions.register_custom_ops_library and calls RegisterCustomOps.
//
//   SwiGLU(x) -> y     x: (..., 2I) float16, gate then up; y: (..., I) = silu(gate) * up
//   Linear(x, w) -> y  x: (..., K) float16, w: (N, K) float16; y: (..., N) = x . w^T
//
// fp32 math inside. The CUDA kernels run on onnxruntime's compute stream, so a captured CUDA
// graph records them.
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <thread>
#include <vector>

#include "cuda_kernels.h"
#include "ort_abi.h"
#include "swiglu.h"

namespace {

constexpr const char* kDomain = "optimizer.ops";

struct Kernel;
using ComputeFn = OrtStatus* (*)(const Kernel& kernel, OrtKernelContext* context);

struct Kernel {
  OrtApiTable api;
  bool cuda;
  ComputeFn compute;
};

OrtStatus* error(OrtApiTable api, const char* message) {
  return ort::api_fn<ort::CreateStatusFn>(api, ort::kCreateStatus)(ort::kInvalidArgument, message);
}

#define ORT_RETURN_IF_ERROR(expr)        \
  do {                                   \
    OrtStatus* status_ = (expr);         \
    if (status_ != nullptr) return status_; \
  } while (0)

OrtStatus* input(const Kernel& kernel, OrtKernelContext* context, size_t index, const OrtValue** value) {
  return ort::api_fn<ort::KernelContextGetInputFn>(kernel.api, ort::kKernelContextGetInput)(context, index, value);
}

OrtStatus* shape(OrtApiTable api, const OrtValue* value, std::vector<int64_t>* dims) {
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

OrtStatus* output(const Kernel& kernel, OrtKernelContext* context, const std::vector<int64_t>& dims, OrtValue** value) {
  return ort::api_fn<ort::KernelContextGetOutputFn>(kernel.api, ort::kKernelContextGetOutput)(
      context, 0, dims.data(), dims.size(), value);
}

OrtStatus* data(const Kernel& kernel, const OrtValue* value, void** out) {
  return ort::api_fn<ort::GetTensorMutableDataFn>(kernel.api, ort::kGetTensorMutableData)(
      const_cast<OrtValue*>(value), out);
}

OrtStatus* stream(const Kernel& kernel, OrtKernelContext* context, void** out) {
  return ort::api_fn<ort::KernelContextGetGPUComputeStreamFn>(kernel.api, ort::kKernelContextGetGPUComputeStream)(
      context, out);
}

int64_t leading_rows(const std::vector<int64_t>& dims) {
  int64_t rows = 1;
  for (size_t d = 0; d + 1 < dims.size(); ++d) rows *= dims[d];
  return rows;
}

// ---- SwiGLU

void swiglu_cpu(const _Float16* x, _Float16* y, int64_t rows, int64_t inter) {
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
    swiglu_cpu(static_cast<const _Float16*>(x_data), static_cast<_Float16*>(y_data), rows, inter);
    return nullptr;
  }
  void* s = nullptr;
  ORT_RETURN_IF_ERROR(stream(kernel, context, &s));
  const char* failure = swiglu_cuda(x_data, y_data, rows, inter, s);
  return failure == nullptr ? nullptr : error(kernel.api, failure);
}

// ---- Linear

// float16 -> float: on x86-64 8 at a time with F16C where the CPU has it (checked once), else
// one by one (a native instruction on ARM).
#if defined(__x86_64__)
__attribute__((target("f16c,avx"))) void to_float_f16c(const _Float16* in, float* out, int64_t count) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
  }
  for (; i < count; ++i) out[i] = static_cast<float>(in[i]);
}
#endif

void to_float(const _Float16* in, float* out, int64_t count) {
#if defined(__x86_64__)
  static const bool f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
  if (f16c) return to_float_f16c(in, out, count);
#endif
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<float>(in[i]);
}

float dot(const float* a, const float* b, int64_t count) {
  float acc[8] = {};  // eight running sums the compiler can keep in one vector
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float sum = 0.f;
  for (; i < count; ++i) sum += a[i] * b[i];
  for (float v : acc) sum += v;
  return sum;
}

// Each weight row converted once a call and multiplied with every input row; the output
// columns split over the CPU's threads (the build verifies custom-ops engines on the CPU).
void linear_cpu(const _Float16* x, const _Float16* w, _Float16* y, int64_t rows, int64_t n, int64_t k) {
  std::vector<float> xf(rows * k);
  to_float(x, xf.data(), rows * k);
  auto columns = [&](int64_t begin, int64_t end) {
    std::vector<float> wf(k);
    for (int64_t o = begin; o < end; ++o) {
      to_float(w + o * k, wf.data(), k);
      for (int64_t r = 0; r < rows; ++r) y[r * n + o] = static_cast<_Float16>(dot(xf.data() + r * k, wf.data(), k));
    }
  };
  const int64_t work = n * k * (rows + 1);
  const int64_t threads = std::min<int64_t>(std::max(1u, std::thread::hardware_concurrency()), 1 + work / (1 << 22));
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(columns, n * t / threads, n * (t + 1) / threads);
  columns(0, n / threads);
  for (std::thread& thread : pool) thread.join();
}

OrtStatus* linear_compute(const Kernel& kernel, OrtKernelContext* context) {
  const OrtValue* x = nullptr;
  const OrtValue* w = nullptr;
  ORT_RETURN_IF_ERROR(input(kernel, context, 0, &x));
  ORT_RETURN_IF_ERROR(input(kernel, context, 1, &w));
  std::vector<int64_t> dims, w_dims;
  ORT_RETURN_IF_ERROR(shape(kernel.api, x, &dims));
  ORT_RETURN_IF_ERROR(shape(kernel.api, w, &w_dims));
  if (dims.empty() || w_dims.size() != 2 || w_dims[1] != dims.back()) {
    return error(kernel.api, "Linear: the weight must be (N, K), K the input's last dimension");
  }
  const int64_t n = w_dims[0], k = w_dims[1];
  const int64_t rows = leading_rows(dims);
  dims.back() = n;
  OrtValue* y = nullptr;
  ORT_RETURN_IF_ERROR(output(kernel, context, dims, &y));
  void *x_data = nullptr, *w_data = nullptr, *y_data = nullptr;
  ORT_RETURN_IF_ERROR(data(kernel, x, &x_data));
  ORT_RETURN_IF_ERROR(data(kernel, w, &w_data));
  ORT_RETURN_IF_ERROR(data(kernel, y, &y_data));
  if (rows == 0 || n == 0) return nullptr;
  if (!kernel.cuda) {
    linear_cpu(static_cast<const _Float16*>(x_data), static_cast<const _Float16*>(w_data),
               static_cast<_Float16*>(y_data), rows, n, k);
    return nullptr;
  }
  void* s = nullptr;
  void* cublas = nullptr;
  ORT_RETURN_IF_ERROR(stream(kernel, context, &s));
  ORT_RETURN_IF_ERROR(ort::api_fn<ort::KernelContextGetResourceFn>(kernel.api, ort::kKernelContextGetResource)(
      context, ort::kCudaResourceVersion, ort::kCudaCublasHandle, &cublas));
  const char* failure = linear_cuda(x_data, w_data, y_data, rows, n, k, s, cublas);
  return failure == nullptr ? nullptr : error(kernel.api, failure);
}

// ---- the callback tables onnxruntime reads

// An op: onnxruntime's callback table first (it is handed a pointer to it), then what the
// callbacks read back from that pointer.
struct Op {
  ort::CustomOp table;
  const char* name;
  size_t inputs;
  bool cuda;
  ComputeFn compute;
};

const Op& op_of(const ort::CustomOp* table) { return *reinterpret_cast<const Op*>(table); }

const char* name(const ort::CustomOp* op) { return op_of(op).name; }
const char* provider(const ort::CustomOp* op) { return op_of(op).cuda ? "CUDAExecutionProvider" : "CPUExecutionProvider"; }
int float16(const ort::CustomOp*, size_t) { return ort::kFloat16; }
size_t input_count(const ort::CustomOp* op) { return op_of(op).inputs; }
size_t one(const ort::CustomOp*) { return 1; }
int required(const ort::CustomOp*, size_t) { return 0; }        // INPUT_OUTPUT_REQUIRED
int default_memory(const ort::CustomOp*, size_t) { return 0; }  // OrtMemTypeDefault
int arity(const ort::CustomOp*) { return 1; }
void* create(const ort::CustomOp* op, OrtApiTable api, const OrtKernelInfo*) {
  return new Kernel{api, op_of(op).cuda, op_of(op).compute};
}
OrtStatus* create_v2(const ort::CustomOp* op, OrtApiTable api, const OrtKernelInfo* info, void** kernel) {
  *kernel = create(op, api, info);
  return nullptr;
}
void compute_v1(void*, OrtKernelContext*) {}  // never called: version 16 runs KernelComputeV2
OrtStatus* compute_v2(void* kernel, OrtKernelContext* context) {
  const Kernel& k = *static_cast<const Kernel*>(kernel);
  return k.compute(k, context);
}
void destroy(void* kernel) { delete static_cast<Kernel*>(kernel); }

Op make_op(const char* op_name, size_t inputs, bool cuda, ComputeFn compute) {
  Op op;
  memset(&op.table, 0, sizeof(op.table));
  ort::CustomOp& t = op.table;
  t.version = ort::kCustomOpVersion;
  t.CreateKernel = create;
  t.GetName = name;
  t.GetExecutionProviderType = provider;
  t.GetInputType = float16;
  t.GetInputTypeCount = input_count;
  t.GetOutputType = float16;
  t.GetOutputTypeCount = one;
  t.KernelCompute = compute_v1;
  t.KernelDestroy = destroy;
  t.GetInputCharacteristic = required;
  t.GetOutputCharacteristic = required;
  t.GetInputMemoryType = default_memory;
  t.GetVariadicInputMinArity = arity;
  t.GetVariadicInputHomogeneity = arity;
  t.GetVariadicOutputMinArity = arity;
  t.GetVariadicOutputHomogeneity = arity;
  t.CreateKernelV2 = create_v2;
  t.KernelComputeV2 = compute_v2;
  op.name = op_name;
  op.inputs = inputs;
  op.cuda = cuda;
  op.compute = compute;
  return op;
}

// Every op for the CPU, then (where the build has them) for CUDA.
Op ops[] = {
    make_op("SwiGLU", 1, false, swiglu_compute), make_op("Linear", 2, false, linear_compute),
    make_op("SwiGLU", 1, true, swiglu_compute),  make_op("Linear", 2, true, linear_compute),
};

}  // namespace

extern "C" {

// "cpu" or "cpu,cuda": the providers this build has kernels for (read by runtime.custom_ops).
const char* optimizer_ops_providers() { return has_cuda_kernels() ? "cpu,cuda" : "cpu"; }

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
  for (const Op& op : ops) {
    if (!op.cuda || has_cuda_kernels()) ORT_RETURN_IF_ERROR(add(domain, &op.table));
  }
  return ort::api_fn<ort::AddCustomOpDomainFn>(api, ort::kAddCustomOpDomain)(options, domain);
}

}  // extern "C"
