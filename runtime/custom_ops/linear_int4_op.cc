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

// What is wrong with the 4-bit weights for an input of width k (empty when nothing is).
std::string weights_problem(const Kernel& kernel, int64_t k, const std::vector<int64_t>& codes,
                            const std::vector<int64_t>& scales, const std::vector<int64_t>* zeros) {
  const int64_t block = kernel.block;
  if (block < kCodes || block % kCodes != 0) return "block_size must be a positive multiple of 32";
  if (k % block != 0) return "K (the input's last dimension) must be a multiple of block_size";
  const int64_t blocks = k / block;
  if (codes.size() != 3 || codes[1] != blocks || codes[2] != block / 2) {
    return "codes must be (N, K / block_size, block_size / 2) uint8";
  }
  if (kernel.kind.swiglu && codes[0] % 2 != 0) return "codes must have an even number of rows (gate rows, then up rows)";
  if (count(scales) != codes[0] * blocks) return "scales must hold N * K / block_size values";
  if (zeros != nullptr && count(*zeros) != codes[0] * ((blocks + 1) / 2)) {
    return "zero points must hold N * ceil(K / block_size / 2) bytes (two 4-bit zero points a byte)";
  }
  return "";
}

}  // namespace

OrtStatus* linear_int4_compute(const Kernel& kernel, OrtKernelContext* context) {
  FamilyInputs in;
  std::string why;
  ORT_RETURN_IF_ERROR(family_inputs(kernel, context, &in, &why));
  const size_t first = kernel.kind.norm ? 3 : 1;  // codes, scales, zeros
  size_t given = 0;
  ORT_RETURN_IF_ERROR(inputs_given(kernel, context, &given));
  const OrtValue *codes = nullptr, *scales = nullptr, *zeros = nullptr;
  ORT_RETURN_IF_ERROR(input(kernel, context, first, &codes));
  ORT_RETURN_IF_ERROR(input(kernel, context, first + 1, &scales));
  if (given > first + 2) ORT_RETURN_IF_ERROR(input(kernel, context, first + 2, &zeros));
  std::vector<int64_t> codes_dims, scales_dims, zeros_dims;
  ORT_RETURN_IF_ERROR(shape(kernel.api, codes, &codes_dims));
  ORT_RETURN_IF_ERROR(shape(kernel.api, scales, &scales_dims));
  if (zeros != nullptr) ORT_RETURN_IF_ERROR(shape(kernel.api, zeros, &zeros_dims));
  if (why.empty()) {
    why = weights_problem(kernel, in.dims.back(), codes_dims, scales_dims, zeros != nullptr ? &zeros_dims : nullptr);
  }
  if (!why.empty()) return error(kernel.api, (std::string(kernel.name) + ": " + why).c_str());
  LinearCall call = family_call(kernel, in, kernel.kind.swiglu ? codes_dims[0] / 2 : codes_dims[0]);
  Int4Weights weights{nullptr, nullptr, nullptr, kernel.block};
  void* out = nullptr;
  ORT_RETURN_IF_ERROR(data(kernel, codes, &out));
  weights.codes = out;
  ORT_RETURN_IF_ERROR(data(kernel, scales, &out));
  weights.scales = out;
  if (zeros != nullptr) {
    ORT_RETURN_IF_ERROR(data(kernel, zeros, &out));
    weights.zeros = out;
  }
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

}  // namespace optimizer_ops
