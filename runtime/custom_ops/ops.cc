// onnxruntime custom ops of the optimizer.ops domain, for the CPU and the CUDA execution provider:
// their callback tables and registration. onnxruntime loads this library through
// SessionOptions.register_custom_ops_library and calls RegisterCustomOps. The computations:
// swiglu_op.cc, linear_op.cc, linear_int4_op.cc and attention_op.cc (checks, outputs, CPU kernels),
// swiglu.cu, linear.cu, linear_int4.cu and attention.cu (CUDA kernels, built with nvcc;
// cuda_none.cc stands in for them otherwise).
//
//   SwiGLU(x) -> y                      x (..., 2I) gate then up; y (..., I) = silu(gate) * up
//   Linear(x, w) -> y                   x (..., K), w (N, K); y (..., N) = x . w^T
//   LinearSwiGLU(x, w) -> y, scratch    w (2N, K) gate rows then up rows; y = silu(x . wg^T) * (x . wu^T)
//   NormLinear(x, skip, gamma, w) -> y, sum, scratch
//   NormLinearSwiGLU(x, skip, gamma, w) -> y, sum, scratch
//                                       sum = x + skip; h = rms_norm(sum) * gamma (attribute epsilon);
//                                       y = Linear / LinearSwiGLU of h; K a multiple of 8
//   LinearInt4(x, codes, scales[, zeros]) -> y, scratch
//   LinearInt4SwiGLU(x, codes, scales[, zeros]) -> y, scratch
//   NormLinearInt4(x, skip, gamma, codes, scales[, zeros]) -> y, sum, scratch
//   NormLinearInt4SwiGLU(x, skip, gamma, codes, scales[, zeros]) -> y, sum, scratch
//                                       the same with 4-bit weights in onnxruntime MatMulNBits' layout
//                                       (attribute block_size, a multiple of 32): codes (N, K / block,
//                                       block / 2) uint8, scales (N, K / block) float16, zeros (N,
//                                       ceil(K / block / 2)) uint8 packed, absent: 8
//   LinearInt4NormLinearInt4(x, codes_a, scales_a[, zeros_a], skip, gamma, codes, scales[, zeros])
//                                       -> y, sum, scratch
//   LinearInt4NormLinearInt4SwiGLU(the same inputs) -> y, sum, scratch
//                                       LinearInt4 of x by the first weights, then NormLinearInt4[SwiGLU]
//                                       of its output (skip, gamma, the second weights): the same y
//                                       and sum as those two ops (one block_size for both); on CUDA
//                                       the first one's K parts added by the norm's kernel
//   CachedAttention(query, past_key, past_value, seqlens_k, total_sequence_length, cos_cache,
//                   sin_cache[, key, value]) -> output, present_key, present_value
//                                       onnxruntime GroupQueryAttention's computation with its rotary
//                                       (attention_op.cc), total_sequence_length in CPU memory; key
//                                       and value absent: packed in the query; attributes num_heads,
//                                       kv_num_heads, scale, softcap, local_window_size
//
// float16 activations, fp32 math inside. `scratch` is the CUDA kernels' working space for more rows than
// the GEMV takes (empty otherwise, and on the CPU). The CUDA kernels run on onnxruntime's compute
// stream, so a captured CUDA graph records them.
#include <stdint.h>
#include <string.h>

#include <string>
#include <vector>

#include "cuda_kernels.h"
#include "kernel_context.h"
#include "ort_abi.h"

namespace {

using namespace optimizer_ops;

constexpr const char* kDomain = "optimizer.ops";

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
  const int* input_types;  // null: every input float16
  uint32_t optional;       // bit i: input i may be absent
  bool attention;          // CachedAttention: its attributes read at creation
  size_t cpu_input;        // an input read from CPU memory on CUDA (SIZE_MAX: none)
};

const Op& op_of(const ort::CustomOp* table) { return *reinterpret_cast<const Op*>(table); }

const char* name(const ort::CustomOp* op) { return op_of(op).name; }
const char* provider(const ort::CustomOp* op) { return op_of(op).cuda ? "CUDAExecutionProvider" : "CPUExecutionProvider"; }
int float16(const ort::CustomOp*, size_t) { return ort::kFloat16; }
int input_type(const ort::CustomOp* op, size_t index) {
  const Op& spec = op_of(op);
  return spec.input_types == nullptr ? ort::kFloat16 : spec.input_types[index];
}
size_t input_count(const ort::CustomOp* op) { return op_of(op).inputs; }
size_t output_count(const ort::CustomOp* op) { return op_of(op).outputs; }
int output_required(const ort::CustomOp*, size_t) { return 0; }  // INPUT_OUTPUT_REQUIRED
int input_required(const ort::CustomOp* op, size_t index) {
  return (op_of(op).optional >> index) & 1;  // INPUT_OUTPUT_REQUIRED (0), INPUT_OUTPUT_OPTIONAL (1)
}
int memory_type(const ort::CustomOp* op, size_t index) {  // OrtMemTypeCPUInput, OrtMemTypeDefault
  return index == op_of(op).cpu_input ? -2 : 0;
}
int arity(const ort::CustomOp*) { return 1; }
// An attribute the node must have; an error naming it where it does not.
template <typename Fn, typename T>
OrtStatus* attribute(OrtApiTable api, const OrtKernelInfo* info, const Op& spec, ort::Slot slot, const char* attr,
                     T* out) {
  OrtStatus* missing = ort::api_fn<Fn>(api, slot)(info, attr, out);
  if (missing == nullptr) return nullptr;
  ort::api_fn<ort::ReleaseStatusFn>(api, ort::kReleaseStatus)(missing);
  return error(api, (std::string(spec.name) + ": the node needs its " + attr + " attribute").c_str());
}
OrtStatus* float_attribute(OrtApiTable api, const OrtKernelInfo* info, const Op& spec, const char* attr, float* out) {
  return attribute<ort::KernelInfoGetAttributeFloatFn>(api, info, spec, ort::kKernelInfoGetAttributeFloat, attr, out);
}
OrtStatus* int_attribute(OrtApiTable api, const OrtKernelInfo* info, const Op& spec, const char* attr, int64_t* out) {
  return attribute<ort::KernelInfoGetAttributeInt64Fn>(api, info, spec, ort::kKernelInfoGetAttributeInt64, attr, out);
}

OrtStatus* create_v2(const ort::CustomOp* op, OrtApiTable api, const OrtKernelInfo* info, void** kernel) {
  const Op& spec = op_of(op);
  Kernel made{api, spec.name, spec.cuda, spec.compute, spec.kind, 0.f, 0, {}};
  if (spec.kind.norm) ORT_RETURN_IF_ERROR(float_attribute(api, info, spec, "epsilon", &made.epsilon));
  if (spec.kind.int4) ORT_RETURN_IF_ERROR(int_attribute(api, info, spec, "block_size", &made.block));
  if (spec.attention) {
    AttentionAttrs& a = made.attention;
    ORT_RETURN_IF_ERROR(int_attribute(api, info, spec, "num_heads", &a.heads));
    ORT_RETURN_IF_ERROR(int_attribute(api, info, spec, "kv_num_heads", &a.kv_heads));
    ORT_RETURN_IF_ERROR(int_attribute(api, info, spec, "local_window_size", &a.window));
    ORT_RETURN_IF_ERROR(float_attribute(api, info, spec, "scale", &a.scale));
    ORT_RETURN_IF_ERROR(float_attribute(api, info, spec, "softcap", &a.softcap));
  }
  *kernel = new Kernel(made);
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

Op make_op(const char* op_name, size_t inputs, size_t outputs, bool cuda, ComputeFn compute, LinearKind kind = {},
           const int* input_types = nullptr, uint32_t optional_inputs = 0) {
  Op op;
  memset(&op.table, 0, sizeof(op.table));
  ort::CustomOp& t = op.table;
  t.version = ort::kCustomOpVersion;
  t.CreateKernel = create;
  t.GetName = name;
  t.GetExecutionProviderType = provider;
  t.GetInputType = input_type;
  t.GetInputTypeCount = input_count;
  t.GetOutputType = float16;
  t.GetOutputTypeCount = output_count;
  t.KernelCompute = compute_v1;
  t.KernelDestroy = destroy;
  t.GetInputCharacteristic = input_required;
  t.GetOutputCharacteristic = output_required;
  t.GetInputMemoryType = memory_type;
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
  op.input_types = input_types;
  op.optional = optional_inputs;
  op.attention = compute == attention_compute;
  op.cpu_input = op.attention && cuda ? 4 : SIZE_MAX;  // total_sequence_length, a shape, as GQA reads it
  return op;
}

// The LinearInt4 family's input types: x, [skip, gamma,] codes, scales, zeros; with a 4-bit linear
// first, x, its codes, scales, zeros, then skip, gamma, codes, scales, zeros.
constexpr int kInt4Types[] = {ort::kFloat16, ort::kUint8, ort::kFloat16, ort::kUint8};
constexpr int kNormInt4Types[] = {ort::kFloat16, ort::kFloat16, ort::kFloat16, ort::kUint8, ort::kFloat16, ort::kUint8};
constexpr int kChainInt4Types[] = {ort::kFloat16, ort::kUint8, ort::kFloat16, ort::kUint8, ort::kFloat16,
                                   ort::kFloat16, ort::kUint8, ort::kFloat16, ort::kUint8};
constexpr uint32_t kChainOptional = (1u << 3) | (1u << 8);  // the zero points of either linear
// CachedAttention's: query, past_key, past_value, seqlens_k, total_sequence_length, cos_cache,
// sin_cache, key, value.
constexpr int kAttentionTypes[] = {ort::kFloat16, ort::kFloat16, ort::kFloat16, ort::kInt32, ort::kInt32,
                                   ort::kFloat16, ort::kFloat16, ort::kFloat16, ort::kFloat16};

// Every op, for the CPU and for CUDA (registered where the build has CUDA kernels).
constexpr size_t kOps = 12;
Op make_ops(bool cuda, size_t i) {
  switch (i) {
    case 0: return make_op("SwiGLU", 1, 1, cuda, swiglu_compute);
    case 1: return make_op("Linear", 2, 1, cuda, linear_compute);
    case 2: return make_op("LinearSwiGLU", 2, 2, cuda, linear_compute, {false, true, false});
    case 3: return make_op("NormLinear", 4, 3, cuda, linear_compute, {true, false, false});
    case 4: return make_op("NormLinearSwiGLU", 4, 3, cuda, linear_compute, {true, true, false});
    case 5: return make_op("LinearInt4", 4, 2, cuda, linear_int4_compute, {false, false, true}, kInt4Types, 1u << 3);
    case 6:
      return make_op("LinearInt4SwiGLU", 4, 2, cuda, linear_int4_compute, {false, true, true}, kInt4Types, 1u << 3);
    case 7:
      return make_op("NormLinearInt4", 6, 3, cuda, linear_int4_compute, {true, false, true}, kNormInt4Types, 1u << 5);
    case 8:
      return make_op("NormLinearInt4SwiGLU", 6, 3, cuda, linear_int4_compute, {true, true, true}, kNormInt4Types,
                     1u << 5);
    case 9:
      return make_op("LinearInt4NormLinearInt4", 9, 3, cuda, linear_int4_chain_compute, {true, false, true},
                     kChainInt4Types, kChainOptional);
    case 10:
      return make_op("LinearInt4NormLinearInt4SwiGLU", 9, 3, cuda, linear_int4_chain_compute, {true, true, true},
                     kChainInt4Types, kChainOptional);
    default:
      return make_op("CachedAttention", 9, 3, cuda, attention_compute, {}, kAttentionTypes, (1u << 7) | (1u << 8));
  }
}

// The ops' tables, made once (onnxruntime keeps pointers to them for the process).
const std::vector<Op>& all_ops() {
  static const std::vector<Op> ops = [] {
    std::vector<Op> made;
    for (bool cuda : {false, true}) {
      for (size_t i = 0; i < kOps; ++i) made.push_back(make_ops(cuda, i));
    }
    return made;
  }();
  return ops;
}

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
  for (const Op& op : all_ops()) {
    if (!op.cuda || has_cuda_kernels()) ORT_RETURN_IF_ERROR(add(domain, &op.table));
  }
  return ort::api_fn<ort::AddCustomOpDomainFn>(api, ort::kAddCustomOpDomain)(options, domain);
}

}  // extern "C"
