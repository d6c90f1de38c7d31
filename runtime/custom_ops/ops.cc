// onnxruntime custom ops of the optimizer.ops domain, for the CPU and (built with nvcc, with
// swiglu.cu and linear.cu; cuda_none.cc otherwise) the CUDA execution provider. onnxruntime loads
// this library through SessionOptions.register_custom_ops_library and calls RegisterCustomOps.
//
//   SwiGLU(x) -> y                      x (..., 2I) gate then up; y (..., I) = silu(gate) * up
//   Linear(x, w) -> y                   x (..., K), w (N, K); y (..., N) = x . w^T
//   LinearSwiGLU(x, w) -> y, scratch    w (2N, K) gate rows then up rows; y = silu(x . wg^T) * (x . wu^T)
//   NormLinear(x, skip, gamma, w) -> y, sum, scratch
//   NormLinearSwiGLU(x, skip, gamma, w) -> y, sum, scratch
//                                       sum = x + skip; h = rms_norm(sum) * gamma (attribute epsilon);
//                                       y = Linear / LinearSwiGLU of h; K a multiple of 8
//
// float16 data, fp32 math inside. `scratch` is the CUDA kernels' working space for more rows than
// the GEMV takes (empty otherwise, and on the CPU). The CUDA kernels run on onnxruntime's compute
// stream, so a captured CUDA graph records them.
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "cuda_kernels.h"
#include "ort_abi.h"
#include "op_math.h"

namespace {

constexpr const char* kDomain = "optimizer.ops";

struct Kernel;
using ComputeFn = OrtStatus* (*)(const Kernel& kernel, OrtKernelContext* context);

// What a Linear-family op adds to x . w^T.
struct LinearKind {
  bool norm;
  bool swiglu;
};

struct Kernel {
  OrtApiTable api;
  bool cuda;
  ComputeFn compute;
  LinearKind kind;
  float epsilon;  // the norm's
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

OrtStatus* output(const Kernel& kernel, OrtKernelContext* context, const std::vector<int64_t>& dims, OrtValue** value,
                  size_t index = 0) {
  return ort::api_fn<ort::KernelContextGetOutputFn>(kernel.api, ort::kKernelContextGetOutput)(
      context, index, dims.data(), dims.size(), value);
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

// sum = x + skip; normed = rms_norm(sum) * gamma, both rounded to float16 as the CUDA kernels do.
void skip_norm_cpu(const _Float16* x, const _Float16* skip, const _Float16* gamma, _Float16* sum, _Float16* normed,
                   int64_t rows, int64_t k, float epsilon) {
  for (int64_t r = 0; r < rows; ++r) {
    float squares = 0.f;
    for (int64_t i = 0; i < k; ++i) {
      const float s = static_cast<float>(x[r * k + i]) + static_cast<float>(skip[r * k + i]);
      squares += s * s;
      sum[r * k + i] = static_cast<_Float16>(s);
    }
    const float scale = rms_scale(squares, k, epsilon);
    for (int64_t i = 0; i < k; ++i) {
      normed[r * k + i] = static_cast<_Float16>(static_cast<float>(sum[r * k + i]) * scale * static_cast<float>(gamma[i]));
    }
  }
}

void linear_family_cpu(const LinearCall& c) {
  const _Float16* h = static_cast<const _Float16*>(c.x);
  std::vector<_Float16> normed;
  if (c.norm) {
    normed.resize(c.rows * c.k);
    skip_norm_cpu(h, static_cast<const _Float16*>(c.skip), static_cast<const _Float16*>(c.gamma),
                  static_cast<_Float16*>(c.sum), normed.data(), c.rows, c.k, c.epsilon);
    h = normed.data();
  }
  const _Float16* w = static_cast<const _Float16*>(c.w);
  _Float16* y = static_cast<_Float16*>(c.y);
  if (!c.swiglu) return linear_cpu(h, w, y, c.rows, c.n, c.k);
  std::vector<_Float16> gate_up(c.rows * 2 * c.n);
  linear_cpu(h, w, gate_up.data(), c.rows, 2 * c.n, c.k);
  swiglu_cpu(gate_up.data(), y, c.rows, c.n);
}

OrtStatus* linear_compute(const Kernel& kernel, OrtKernelContext* context) {
  const LinearKind kind = kernel.kind;
  const char* name = kind.norm ? (kind.swiglu ? "NormLinearSwiGLU" : "NormLinear") : (kind.swiglu ? "LinearSwiGLU" : "Linear");
  const OrtValue *x = nullptr, *skip = nullptr, *gamma = nullptr, *w = nullptr;
  ORT_RETURN_IF_ERROR(input(kernel, context, 0, &x));
  if (kind.norm) {
    ORT_RETURN_IF_ERROR(input(kernel, context, 1, &skip));
    ORT_RETURN_IF_ERROR(input(kernel, context, 2, &gamma));
  }
  ORT_RETURN_IF_ERROR(input(kernel, context, kind.norm ? 3 : 1, &w));
  std::vector<int64_t> dims, w_dims, skip_dims, gamma_dims;
  ORT_RETURN_IF_ERROR(shape(kernel.api, x, &dims));
  ORT_RETURN_IF_ERROR(shape(kernel.api, w, &w_dims));
  std::string why;
  if (dims.empty() || w_dims.size() != 2 || w_dims[1] != dims.back()) {
    why = "the weight must be (N, K), K the input's last dimension";
  } else if (kind.swiglu && w_dims[0] % 2 != 0) {
    why = "the weight must have an even number of rows (gate rows, then up rows)";
  } else if (kind.norm) {
    ORT_RETURN_IF_ERROR(shape(kernel.api, skip, &skip_dims));
    ORT_RETURN_IF_ERROR(shape(kernel.api, gamma, &gamma_dims));
    if (skip_dims != dims) why = "skip must have the input's shape";
    else if (gamma_dims.size() != 1 || gamma_dims[0] != dims.back()) why = "gamma must be (K,)";
    else if (dims.back() % 8 != 0) why = "K must be a multiple of 8";
  }
  if (!why.empty()) return error(kernel.api, (std::string(name) + ": " + why).c_str());
  LinearCall call{};
  call.k = dims.back();
  call.n = kind.swiglu ? w_dims[0] / 2 : w_dims[0];
  call.rows = leading_rows(dims);
  call.epsilon = kernel.epsilon;
  call.norm = kind.norm;
  call.swiglu = kind.swiglu;
  std::vector<int64_t> y_dims = dims;
  y_dims.back() = call.n;
  OrtValue *y = nullptr, *sum = nullptr, *scratch = nullptr;
  ORT_RETURN_IF_ERROR(output(kernel, context, y_dims, &y, 0));
  if (kind.norm) ORT_RETURN_IF_ERROR(output(kernel, context, dims, &sum, 1));
  void* out = nullptr;
  ORT_RETURN_IF_ERROR(data(kernel, x, &out));
  call.x = out;
  ORT_RETURN_IF_ERROR(data(kernel, w, &out));
  call.w = out;
  ORT_RETURN_IF_ERROR(data(kernel, y, &call.y));
  if (kind.norm) {
    ORT_RETURN_IF_ERROR(data(kernel, skip, &out));
    call.skip = out;
    ORT_RETURN_IF_ERROR(data(kernel, gamma, &out));
    call.gamma = out;
    ORT_RETURN_IF_ERROR(data(kernel, sum, &call.sum));
  }
  if (kind.norm || kind.swiglu) {
    const std::vector<int64_t> scratch_dims{kernel.cuda ? linear_scratch_elements(call) : 0};
    ORT_RETURN_IF_ERROR(output(kernel, context, scratch_dims, &scratch, kind.norm ? 2 : 1));
    ORT_RETURN_IF_ERROR(data(kernel, scratch, &call.scratch));
  }
  if (call.rows == 0 || call.n == 0) return nullptr;
  if (!kernel.cuda) {
    linear_family_cpu(call);
    return nullptr;
  }
  void* s = nullptr;
  void* cublas = nullptr;
  ORT_RETURN_IF_ERROR(stream(kernel, context, &s));
  ORT_RETURN_IF_ERROR(ort::api_fn<ort::KernelContextGetResourceFn>(kernel.api, ort::kKernelContextGetResource)(
      context, ort::kCudaResourceVersion, ort::kCudaCublasHandle, &cublas));
  const char* failure = linear_cuda(call, s, cublas);
  return failure == nullptr ? nullptr : error(kernel.api, failure);
}

// ---- the callback tables onnxruntime reads

// An op: onnxruntime's callback table first (it is handed a pointer to it), then what the
// callbacks read back from that pointer.
struct Op {
  ort::CustomOp table;
  const char* name;
  size_t inputs;
  size_t outputs;
  bool cuda;
  ComputeFn compute;
  LinearKind kind;
};

const Op& op_of(const ort::CustomOp* table) { return *reinterpret_cast<const Op*>(table); }

const char* name(const ort::CustomOp* op) { return op_of(op).name; }
const char* provider(const ort::CustomOp* op) { return op_of(op).cuda ? "CUDAExecutionProvider" : "CPUExecutionProvider"; }
int float16(const ort::CustomOp*, size_t) { return ort::kFloat16; }
size_t input_count(const ort::CustomOp* op) { return op_of(op).inputs; }
size_t output_count(const ort::CustomOp* op) { return op_of(op).outputs; }
int required(const ort::CustomOp*, size_t) { return 0; }        // INPUT_OUTPUT_REQUIRED
int default_memory(const ort::CustomOp*, size_t) { return 0; }  // OrtMemTypeDefault
int arity(const ort::CustomOp*) { return 1; }
OrtStatus* create_v2(const ort::CustomOp* op, OrtApiTable api, const OrtKernelInfo* info, void** kernel) {
  const Op& spec = op_of(op);
  float epsilon = 0.f;
  if (spec.kind.norm) {
    OrtStatus* missing = ort::api_fn<ort::KernelInfoGetAttributeFloatFn>(api, ort::kKernelInfoGetAttributeFloat)(
        info, "epsilon", &epsilon);
    if (missing != nullptr) {
      ort::api_fn<ort::ReleaseStatusFn>(api, ort::kReleaseStatus)(missing);
      return error(api, (std::string(spec.name) + ": the node needs its norm's epsilon attribute").c_str());
    }
  }
  *kernel = new Kernel{api, spec.cuda, spec.compute, spec.kind, epsilon};
  return nullptr;
}
void* create(const ort::CustomOp* op, OrtApiTable api, const OrtKernelInfo* info) {  // never called (version 16)
  void* kernel = nullptr;
  OrtStatus* status = create_v2(op, api, info, &kernel);
  if (status != nullptr) ort::api_fn<ort::ReleaseStatusFn>(api, ort::kReleaseStatus)(status);
  return kernel;
}
void compute_v1(void*, OrtKernelContext*) {}  // never called: version 16 runs KernelComputeV2
OrtStatus* compute_v2(void* kernel, OrtKernelContext* context) {
  const Kernel& k = *static_cast<const Kernel*>(kernel);
  return k.compute(k, context);
}
void destroy(void* kernel) { delete static_cast<Kernel*>(kernel); }

Op make_op(const char* op_name, size_t inputs, size_t outputs, bool cuda, ComputeFn compute, LinearKind kind = {}) {
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
  t.GetOutputTypeCount = output_count;
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
  op.outputs = outputs;
  op.cuda = cuda;
  op.compute = compute;
  op.kind = kind;
  return op;
}

// Every op, for the CPU and for CUDA (registered where the build has CUDA kernels).
Op make_ops(bool cuda, size_t i) {
  switch (i) {
    case 0: return make_op("SwiGLU", 1, 1, cuda, swiglu_compute);
    case 1: return make_op("Linear", 2, 1, cuda, linear_compute);
    case 2: return make_op("LinearSwiGLU", 2, 2, cuda, linear_compute, {false, true});
    case 3: return make_op("NormLinear", 4, 3, cuda, linear_compute, {true, false});
    default: return make_op("NormLinearSwiGLU", 4, 3, cuda, linear_compute, {true, true});
  }
}

Op ops[] = {make_ops(false, 0), make_ops(false, 1), make_ops(false, 2), make_ops(false, 3), make_ops(false, 4),
            make_ops(true, 0),  make_ops(true, 1),  make_ops(true, 2),  make_ops(true, 3),  make_ops(true, 4)};

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
