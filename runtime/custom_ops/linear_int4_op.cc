// The LinearInt4 family (ops.cc lists the signatures): the Linear family with 4-bit weights in
// onnxruntime MatMulNBits' layout (cuda_kernels.h's Int4Weights). Input checks, outputs and the
// CPU kernel here (each weight row dequantized to fp32 once a call, as MatMulNBits' reference
// does); the CUDA kernels in linear_int4.cu.
#include <stdint.h>

#include <string>
#include <vector>

#include "cuda_kernels.h"
#include "kernel_context.h"
#include "linear_cpu.h"

namespace optimizer_ops {

namespace {

constexpr int64_t kCodes = 32;  // the CUDA kernels read codes 32 at a time: the block is a multiple

// Row o's k weights in fp32: (code - zero) * scale, block by block.
void dequantize_row(const Int4Weights& w, int64_t o, int64_t k, float* out) {
  const int64_t blocks = k / w.block;
  const uint8_t* codes = static_cast<const uint8_t*>(w.codes) + o * (k / 2);
  const _Float16* scales = static_cast<const _Float16*>(w.scales);
  const uint8_t* zeros = static_cast<const uint8_t*>(w.zeros);
  for (int64_t b = 0; b < blocks; ++b) {
    const float scale = static_cast<float>(scales[o * blocks + b]);
    int zero = 8;
    if (zeros != nullptr) {
      const uint8_t byte = zeros[o * ((blocks + 1) / 2) + b / 2];
      zero = b % 2 == 0 ? byte & 0xF : byte >> 4;
    }
    for (int64_t i = b * w.block; i < (b + 1) * w.block; i += 2) {
      const uint8_t byte = codes[i / 2];
      out[i] = static_cast<float>((byte & 0xF) - zero) * scale;
      out[i + 1] = static_cast<float>((byte >> 4) - zero) * scale;
    }
  }
}

void linear_int4_cpu(const _Float16* x, const Int4Weights& w, _Float16* y, int64_t rows, int64_t n, int64_t k) {
  std::vector<float> xf(rows * k);
  to_float(x, xf.data(), rows * k);
  for_columns(n, n * k * (rows + 2), [&](int64_t begin, int64_t end) {
    std::vector<float> wf(k);
    for (int64_t o = begin; o < end; ++o) {
      dequantize_row(w, o, k, wf.data());
      for (int64_t r = 0; r < rows; ++r) y[r * n + o] = static_cast<_Float16>(dot(xf.data() + r * k, wf.data(), k));
    }
  });
}

int64_t count(const std::vector<int64_t>& dims) {
  int64_t total = 1;
  for (int64_t d : dims) total *= d;
  return total;
}

// What is wrong with the 4-bit weights for an input of width k (empty when nothing is); `swiglu`:
// gate rows, then up rows.
std::string weights_problem(const Kernel& kernel, int64_t k, bool swiglu, const std::vector<int64_t>& codes,
                            const std::vector<int64_t>& scales, const std::vector<int64_t>* zeros) {
  const int64_t block = kernel.block;
  if (block < kCodes || block % kCodes != 0) return "block_size must be a positive multiple of 32";
  if (k % block != 0) return "K (the input's last dimension) must be a multiple of block_size";
  const int64_t blocks = k / block;
  if (codes.size() != 3 || codes[1] != blocks || codes[2] != block / 2) {
    return "codes must be (N, K / block_size, block_size / 2) uint8";
  }
  if (swiglu && codes[0] % 2 != 0) return "codes must have an even number of rows (gate rows, then up rows)";
  if (count(scales) != codes[0] * blocks) return "scales must hold N * K / block_size values";
  if (zeros != nullptr && count(*zeros) != codes[0] * ((blocks + 1) / 2)) {
    return "zero points must hold N * ceil(K / block_size / 2) bytes (two 4-bit zero points a byte)";
  }
  return "";
}

// The 4-bit weights at inputs first (codes), first + 1 (scales) and first + 2 (zero points, where
// given) for an input of width k: their data into `w`, their rows of codes into `rows`; `why`
// says what is wrong with them (left as it is where it already says something).
OrtStatus* int4_weights(const Kernel& kernel, OrtKernelContext* context, size_t first, int64_t k, bool swiglu,
                        Int4Weights* w, int64_t* rows, std::string* why) {
  const OrtValue *codes = nullptr, *scales = nullptr, *zeros = nullptr;
  ORT_RETURN_IF_ERROR(input(kernel, context, first, &codes));
  ORT_RETURN_IF_ERROR(input(kernel, context, first + 1, &scales));
  size_t given = 0;
  ORT_RETURN_IF_ERROR(inputs_given(kernel, context, &given));
  if (given > first + 2) ORT_RETURN_IF_ERROR(input(kernel, context, first + 2, &zeros));  // null where absent
  std::vector<int64_t> codes_dims, scales_dims, zeros_dims;
  ORT_RETURN_IF_ERROR(shape(kernel.api, codes, &codes_dims));
  ORT_RETURN_IF_ERROR(shape(kernel.api, scales, &scales_dims));
  if (zeros != nullptr) ORT_RETURN_IF_ERROR(shape(kernel.api, zeros, &zeros_dims));
  if (why->empty()) {
    *why = weights_problem(kernel, k, swiglu, codes_dims, scales_dims, zeros != nullptr ? &zeros_dims : nullptr);
  }
  if (!why->empty()) return nullptr;
  *rows = codes_dims[0];
  *w = Int4Weights{nullptr, nullptr, nullptr, kernel.block};
  void* out = nullptr;
  ORT_RETURN_IF_ERROR(data(kernel, codes, &out));
  w->codes = out;
  ORT_RETURN_IF_ERROR(data(kernel, scales, &out));
  w->scales = out;
  if (zeros != nullptr) {
    ORT_RETURN_IF_ERROR(data(kernel, zeros, &out));
    w->zeros = out;
  }
  return nullptr;
}

OrtStatus* refuse(const Kernel& kernel, const std::string& why) {
  return error(kernel.api, (std::string(kernel.name) + ": " + why).c_str());
}

}  // namespace

OrtStatus* linear_int4_compute(const Kernel& kernel, OrtKernelContext* context) {
  FamilyInputs in;
  std::string why;
  ORT_RETURN_IF_ERROR(family_inputs(kernel, context, &in, &why));
  Int4Weights weights{};
  int64_t rows_of_codes = 0;
  const int64_t k = in.dims.empty() ? 0 : in.dims.back();
  ORT_RETURN_IF_ERROR(
      int4_weights(kernel, context, kernel.kind.norm ? 3 : 1, k, kernel.kind.swiglu, &weights, &rows_of_codes, &why));
  if (!why.empty()) return refuse(kernel, why);
  LinearCall call = family_call(kernel, in, kernel.kind.swiglu ? rows_of_codes / 2 : rows_of_codes);
  ORT_RETURN_IF_ERROR(family_outputs(kernel, context, in,
                                     [&](const LinearCall& c) { return linear_int4_scratch_elements(c, weights); },
                                     &call));
  if (call.rows == 0 || call.n == 0) return nullptr;
  if (!kernel.cuda) {
    family_cpu(call, [&](const _Float16* h, _Float16* y, int64_t n) {
      linear_int4_cpu(h, weights, y, call.rows, n, call.k);
    });
    return nullptr;
  }
  void *s = nullptr, *cublas = nullptr;
  ORT_RETURN_IF_ERROR(cuda_handles(kernel, context, &s, &cublas));
  const char* failure = linear_int4_cuda(call, weights, s, cublas);
  return failure == nullptr ? nullptr : error(kernel.api, failure);
}

// LinearInt4NormLinearInt4[SwiGLU]: inputs x, codes_a, scales_a, [zeros_a], skip, gamma, codes,
// scales, [zeros]; the first linear's outputs h = x . wa^T are the norm's input (skip and the sum
// h's shape), the second linear's y x's shape with its outputs last.
OrtStatus* linear_int4_chain_compute(const Kernel& kernel, OrtKernelContext* context) {
  const OrtValue *x = nullptr, *skip = nullptr, *gamma = nullptr;
  std::vector<int64_t> x_dims, skip_dims, gamma_dims;
  ORT_RETURN_IF_ERROR(input(kernel, context, 0, &x));
  ORT_RETURN_IF_ERROR(input(kernel, context, 4, &skip));
  ORT_RETURN_IF_ERROR(input(kernel, context, 5, &gamma));
  ORT_RETURN_IF_ERROR(shape(kernel.api, x, &x_dims));
  ORT_RETURN_IF_ERROR(shape(kernel.api, skip, &skip_dims));
  ORT_RETURN_IF_ERROR(shape(kernel.api, gamma, &gamma_dims));
  std::string why = x_dims.empty() ? "the input must have at least one dimension (K last)" : "";
  Int4Weights first_w{}, w{};
  int64_t hidden = 0, rows_of_codes = 0;
  const int64_t k = why.empty() ? x_dims.back() : 0;
  ORT_RETURN_IF_ERROR(int4_weights(kernel, context, 1, k, false, &first_w, &hidden, &why));
  if (why.empty()) {
    std::vector<int64_t> h_dims = x_dims;
    h_dims.back() = hidden;
    if (skip_dims != h_dims) why = "skip must have the first linear's output shape (x's, its outputs last)";
    else if (gamma_dims.size() != 1 || gamma_dims[0] != hidden)
      why = "gamma must be (N,), N the first linear's outputs";
    else if (hidden % 8 != 0) why = "the first linear's outputs must be a multiple of 8";
  }
  ORT_RETURN_IF_ERROR(int4_weights(kernel, context, 6, hidden, kernel.kind.swiglu, &w, &rows_of_codes, &why));
  if (!why.empty()) return refuse(kernel, why);
  LinearCall first{}, call{};
  first.rows = call.rows = leading_rows(x_dims);
  first.k = x_dims.back();
  first.n = call.k = hidden;
  call.n = kernel.kind.swiglu ? rows_of_codes / 2 : rows_of_codes;
  call.epsilon = kernel.epsilon;
  call.norm = true;
  call.swiglu = kernel.kind.swiglu;
  std::vector<int64_t> y_dims = x_dims;
  y_dims.back() = call.n;
  OrtValue *y = nullptr, *sum = nullptr, *scratch = nullptr;
  ORT_RETURN_IF_ERROR(output(kernel, context, y_dims, &y, 0));
  ORT_RETURN_IF_ERROR(output(kernel, context, skip_dims, &sum, 1));
  void* out = nullptr;
  ORT_RETURN_IF_ERROR(data(kernel, x, &out));
  first.x = out;
  ORT_RETURN_IF_ERROR(data(kernel, skip, &out));
  call.skip = out;
  ORT_RETURN_IF_ERROR(data(kernel, gamma, &out));
  call.gamma = out;
  ORT_RETURN_IF_ERROR(data(kernel, y, &call.y));
  ORT_RETURN_IF_ERROR(data(kernel, sum, &call.sum));
  const int64_t scratch_elements = kernel.cuda ? linear_int4_chain_scratch_elements(first, first_w, call, w) : 0;
  ORT_RETURN_IF_ERROR(output(kernel, context, std::vector<int64_t>{scratch_elements}, &scratch, 2));
  ORT_RETURN_IF_ERROR(data(kernel, scratch, &call.scratch));
  if (call.rows == 0 || call.n == 0) return nullptr;
  if (!kernel.cuda) {
    std::vector<_Float16> h(call.rows * hidden);
    const _Float16* x_rows = static_cast<const _Float16*>(first.x);
    if (hidden > 0) linear_int4_cpu(x_rows, first_w, h.data(), call.rows, hidden, first.k);
    call.x = h.data();
    family_cpu(call, [&](const _Float16* normed, _Float16* out_rows, int64_t n) {
      linear_int4_cpu(normed, w, out_rows, call.rows, n, call.k);
    });
    return nullptr;
  }
  void *s = nullptr, *cublas = nullptr;
  ORT_RETURN_IF_ERROR(cuda_handles(kernel, context, &s, &cublas));
  const char* failure = linear_int4_chain_cuda(first, first_w, call, w, s, cublas);
  return failure == nullptr ? nullptr : error(kernel.api, failure);
}

}  // namespace optimizer_ops
