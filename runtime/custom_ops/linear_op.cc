// The Linear family (ops.cc lists the signatures): input checks, outputs, and the CPU kernels;
// the CUDA ones in linear.cu. The CPU kernels compute what the CUDA ones do, rounding the sum and
// the normalized rows to float16 as they do.
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "cuda_kernels.h"
#include "kernel_context.h"
#include "linear_cpu.h"
#include "op_math.h"

namespace optimizer_ops {

namespace {

#if defined(__x86_64__)
__attribute__((target("f16c,avx"))) void to_float_f16c(const _Float16* in, float* out, int64_t count) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
  }
  for (; i < count; ++i) out[i] = static_cast<float>(in[i]);
}
#endif

}  // namespace

// float16 -> float: on x86-64 8 at a time with F16C where the CPU has it (checked once), else
// one by one (a native instruction on ARM).
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

void for_columns(int64_t n, int64_t work, const std::function<void(int64_t, int64_t)>& columns) {
  const int64_t threads = std::min<int64_t>(std::max(1u, std::thread::hardware_concurrency()), 1 + work / (1 << 22));
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(columns, n * t / threads, n * (t + 1) / threads);
  columns(0, n / threads);
  for (std::thread& thread : pool) thread.join();
}

namespace {

// Each weight row converted once a call and multiplied with every input row.
void linear_cpu(const _Float16* x, const _Float16* w, _Float16* y, int64_t rows, int64_t n, int64_t k) {
  std::vector<float> xf(rows * k);
  to_float(x, xf.data(), rows * k);
  for_columns(n, n * k * (rows + 1), [&](int64_t begin, int64_t end) {
    std::vector<float> wf(k);
    for (int64_t o = begin; o < end; ++o) {
      to_float(w + o * k, wf.data(), k);
      for (int64_t r = 0; r < rows; ++r) y[r * n + o] = static_cast<_Float16>(dot(xf.data() + r * k, wf.data(), k));
    }
  });
}

}  // namespace

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

void family_cpu(const LinearCall& c, const Projection& project) {
  const _Float16* h = static_cast<const _Float16*>(c.x);
  std::vector<_Float16> normed;
  if (c.norm) {
    normed.resize(c.rows * c.k);
    skip_norm_cpu(h, static_cast<const _Float16*>(c.skip), static_cast<const _Float16*>(c.gamma),
                  static_cast<_Float16*>(c.sum), normed.data(), c.rows, c.k, c.epsilon);
    h = normed.data();
  }
  _Float16* y = static_cast<_Float16*>(c.y);
  if (!c.swiglu) return project(h, y, c.n);
  std::vector<_Float16> gate_up(c.rows * 2 * c.n);
  project(h, gate_up.data(), 2 * c.n);
  swiglu_rows_cpu(gate_up.data(), y, c.rows, c.n);
}

OrtStatus* family_inputs(const Kernel& kernel, OrtKernelContext* context, FamilyInputs* in, std::string* why) {
  ORT_RETURN_IF_ERROR(input(kernel, context, 0, &in->x));
  ORT_RETURN_IF_ERROR(shape(kernel.api, in->x, &in->dims));
  if (in->dims.empty()) {
    *why = "the input must have at least one dimension (K last)";
    return nullptr;
  }
  if (!kernel.kind.norm) return nullptr;
  ORT_RETURN_IF_ERROR(input(kernel, context, 1, &in->skip));
  ORT_RETURN_IF_ERROR(input(kernel, context, 2, &in->gamma));
  std::vector<int64_t> skip_dims, gamma_dims;
  ORT_RETURN_IF_ERROR(shape(kernel.api, in->skip, &skip_dims));
  ORT_RETURN_IF_ERROR(shape(kernel.api, in->gamma, &gamma_dims));
  if (skip_dims != in->dims) *why = "skip must have the input's shape";
  else if (gamma_dims.size() != 1 || gamma_dims[0] != in->dims.back()) *why = "gamma must be (K,)";
  else if (in->dims.back() % 8 != 0) *why = "K must be a multiple of 8";
  return nullptr;
}

LinearCall family_call(const Kernel& kernel, const FamilyInputs& in, int64_t n) {
  LinearCall call{};
  call.k = in.dims.back();
  call.n = n;
  call.rows = leading_rows(in.dims);
  call.epsilon = kernel.epsilon;
  call.norm = kernel.kind.norm;
  call.swiglu = kernel.kind.swiglu;
  return call;
}

OrtStatus* family_outputs(const Kernel& kernel, OrtKernelContext* context, const FamilyInputs& in,
                          const ScratchSize& scratch_elements, LinearCall* call) {
  const LinearKind kind = kernel.kind;
  std::vector<int64_t> y_dims = in.dims;
  y_dims.back() = call->n;
  OrtValue *y = nullptr, *sum = nullptr, *scratch = nullptr;
  ORT_RETURN_IF_ERROR(output(kernel, context, y_dims, &y, 0));
  if (kind.norm) ORT_RETURN_IF_ERROR(output(kernel, context, in.dims, &sum, 1));
  void* out = nullptr;
  ORT_RETURN_IF_ERROR(data(kernel, in.x, &out));
  call->x = out;
  ORT_RETURN_IF_ERROR(data(kernel, y, &call->y));
  if (kind.norm) {
    ORT_RETURN_IF_ERROR(data(kernel, in.skip, &out));
    call->skip = out;
    ORT_RETURN_IF_ERROR(data(kernel, in.gamma, &out));
    call->gamma = out;
    ORT_RETURN_IF_ERROR(data(kernel, sum, &call->sum));
  }
  if (kind.norm || kind.swiglu || kind.int4) {
    const std::vector<int64_t> scratch_dims{kernel.cuda ? scratch_elements(*call) : 0};  // its pointers set
    ORT_RETURN_IF_ERROR(output(kernel, context, scratch_dims, &scratch, kind.norm ? 2 : 1));
    ORT_RETURN_IF_ERROR(data(kernel, scratch, &call->scratch));
  }
  return nullptr;
}

OrtStatus* cuda_handles(const Kernel& kernel, OrtKernelContext* context, void** stream_out, void** cublas) {
  ORT_RETURN_IF_ERROR(stream(kernel, context, stream_out));
  return ort::api_fn<ort::KernelContextGetResourceFn>(kernel.api, ort::kKernelContextGetResource)(
      context, ort::kCudaResourceVersion, ort::kCudaCublasHandle, cublas);
}

OrtStatus* linear_compute(const Kernel& kernel, OrtKernelContext* context) {
  const LinearKind kind = kernel.kind;
  FamilyInputs in;
  std::string why;
  ORT_RETURN_IF_ERROR(family_inputs(kernel, context, &in, &why));
  const OrtValue* w = nullptr;
  std::vector<int64_t> w_dims;
  ORT_RETURN_IF_ERROR(input(kernel, context, kind.norm ? 3 : 1, &w));
  ORT_RETURN_IF_ERROR(shape(kernel.api, w, &w_dims));
  if (why.empty() && (w_dims.size() != 2 || w_dims[1] != in.dims.back())) {
    why = "the weight must be (N, K), K the input's last dimension";
  } else if (why.empty() && kind.swiglu && w_dims[0] % 2 != 0) {
    why = "the weight must have an even number of rows (gate rows, then up rows)";
  }
  if (!why.empty()) return error(kernel.api, (std::string(kernel.name) + ": " + why).c_str());
  LinearCall call = family_call(kernel, in, kind.swiglu ? w_dims[0] / 2 : w_dims[0]);
  void* weights = nullptr;
  ORT_RETURN_IF_ERROR(data(kernel, w, &weights));
  call.w = weights;
  ORT_RETURN_IF_ERROR(family_outputs(kernel, context, in, linear_scratch_elements, &call));
  if (call.rows == 0 || call.n == 0) return nullptr;
  if (!kernel.cuda) {
    family_cpu(call, [&](const _Float16* h, _Float16* y, int64_t n) {
      linear_cpu(h, static_cast<const _Float16*>(call.w), y, call.rows, n, call.k);
    });
    return nullptr;
  }
  void *s = nullptr, *cublas = nullptr;
  ORT_RETURN_IF_ERROR(cuda_handles(kernel, context, &s, &cublas));
  const char* failure = linear_cuda(call, s, cublas);
  return failure == nullptr ? nullptr : error(kernel.api, failure);
}

}  // namespace optimizer_ops
