// CachedAttention (ops.cc lists the signature): input checks, outputs, and the CPU kernel; the
// CUDA kernel in attention.cu. What onnxruntime's GroupQueryAttention computes with do_rotary = 1
// and the half-split rotary over the whole head (attention_math.h has the positions): the new
// keys, rotated, and values written into the cache at each row's next positions, then causal
// attention (a sliding window, a softcap where set) of the rotated queries over the cache. The
// present cache has max(past positions, total_sequence_length) positions: the past's own buffer
// where onnxruntime binds both to it (the static layout: written in place), else a new one the
// past is copied into (concatenation, as build verification runs an engine). The CPU kernel
// rounds the rotated queries and keys to float16 as the CUDA kernel does.
#include <math.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "attention_math.h"
#include "cuda_kernels.h"
#include "kernel_context.h"
#include "linear_cpu.h"

namespace optimizer_ops {

namespace {

enum Input : size_t { kQuery = 0, kPastKey, kPastValue, kSeqlens, kTotal, kCos, kSin, kKey, kValue, kInputs };

using Half = _Float16;

float rounded(float v) { return static_cast<float>(static_cast<Half>(v)); }

// One head's `hd` values `x`, rotated for `position` into `out` (rounded to float16).
void rotate_cpu(const Half* x, const Half* cos, const Half* sin, int64_t position, int64_t hd, float* out) {
  const int64_t half = hd / 2;
  for (int64_t d = 0; d < half; ++d) {
    const float c = static_cast<float>(cos[position * half + d]), s = static_cast<float>(sin[position * half + d]);
    const float first = static_cast<float>(x[d]), second = static_cast<float>(x[d + half]);
    out[d] = rounded(rotated_first(first, second, c, s));
    out[d + half] = rounded(rotated_second(first, second, c, s));
  }
}

// What is wrong with a call's shapes and attributes (empty: nothing).
std::string check(const AttentionAttrs& a, const std::vector<int64_t>& q, const std::vector<int64_t>& past,
                  const std::vector<int64_t>& past_v, const std::vector<int64_t>& seqlens,
                  const std::vector<int64_t>& total, const std::vector<int64_t>& cos, const std::vector<int64_t>& sin,
                  const std::vector<int64_t>* key, const std::vector<int64_t>* value) {
  if (q.size() != 3) return "the query must be (batch, seq, width)";
  if (past.size() != 4 || past_v != past) {
    return "past_key and past_value must both be (batch, kv_heads, capacity, head_dim)";
  }
  const int64_t batch = q[0], seq = q[1], hd = past[3];
  if (past[0] != batch) return "the caches' batch must be the query's";
  if (a.kv_heads <= 0 || a.heads % a.kv_heads != 0) return "num_heads must be a multiple of kv_num_heads";
  if (past[1] != a.kv_heads) return "the caches' second dimension must be kv_num_heads";
  if (hd % 2 != 0) return "the head size must be even (rotary pairs)";
  if ((key == nullptr) != (value == nullptr)) return "key and value are given together or not at all";
  if (key == nullptr && q[2] != (a.heads + 2 * a.kv_heads) * hd) {
    return "a packed query must be (batch, seq, (num_heads + 2 kv_num_heads) head_dim)";
  }
  if (key != nullptr) {
    const std::vector<int64_t> kv{batch, seq, a.kv_heads * hd};
    if (q[2] != a.heads * hd) return "the query must be (batch, seq, num_heads head_dim)";
    if (*key != kv || *value != kv) return "key and value must be (batch, seq, kv_num_heads head_dim)";
  }
  if (seqlens != std::vector<int64_t>{batch}) return "seqlens_k must be (batch,)";
  if (!(total.empty() || total == std::vector<int64_t>{1})) return "total_sequence_length must be a scalar";
  if (cos.size() != 2 || cos[1] * 2 != hd || sin != cos) {
    return "cos_cache and sin_cache must be (max_positions, head_dim / 2): rotary over the whole head";
  }
  return "";
}

// The past's positions into the present's first ones, (batch, kv_heads) rows of each, where they
// are different buffers.
void copy_past_cpu(const AttentionCall& c) {
  const int64_t row = c.past_capacity * c.head_dim;
  for (int64_t r = 0; r < c.batch * c.kv_heads; ++r) {
    const int64_t to = r * c.capacity * c.head_dim;
    if (c.present_key != c.past_key) {
      memcpy(static_cast<Half*>(c.present_key) + to, static_cast<const Half*>(c.past_key) + r * row,
             row * sizeof(Half));
    }
    if (c.present_value != c.past_value) {
      memcpy(static_cast<Half*>(c.present_value) + to, static_cast<const Half*>(c.past_value) + r * row,
             row * sizeof(Half));
    }
  }
}

void attention_cpu(const AttentionCall& c) {
  const int64_t hd = c.head_dim, group = c.heads / c.kv_heads, cap = c.capacity;
  const Half* cos = static_cast<const Half*>(c.cos);
  const Half* sin = static_cast<const Half*>(c.sin);
  Half* keys = static_cast<Half*>(c.present_key);
  Half* values = static_cast<Half*>(c.present_value);
  std::vector<float> row(hd);
  for (int64_t b = 0; b < c.batch; ++b) {  // the new keys and values into the cache
    const int64_t past = past_positions(c.seqlens[b], c.seq);
    for (int64_t s = 0; s < c.seq; ++s) {
      const int64_t offset = (b * c.seq + s) * c.kv_stride;
      for (int64_t g = 0; g < c.kv_heads; ++g) {
        const int64_t at = ((b * c.kv_heads + g) * cap + past + s) * hd;
        rotate_cpu(static_cast<const Half*>(c.key) + offset + g * hd, cos, sin, past + s, hd, row.data());
        for (int64_t d = 0; d < hd; ++d) keys[at + d] = static_cast<Half>(row[d]);
        memcpy(values + at, static_cast<const Half*>(c.value) + offset + g * hd, hd * sizeof(Half));
      }
    }
  }
  const float scale = attention_scale(c.scale, hd);
  for_columns(c.batch * c.heads, c.batch * c.heads * c.seq * cap * hd, [&](int64_t begin, int64_t end) {
    std::vector<float> q(hd), k(hd), v(hd), acc(hd), scores(cap);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / c.heads, h = bh % c.heads, g = h / group;
      const int64_t past = past_positions(c.seqlens[b], c.seq);
      const Half* cache_k = keys + (b * c.kv_heads + g) * cap * hd;
      const Half* cache_v = values + (b * c.kv_heads + g) * cap * hd;
      for (int64_t s = 0; s < c.seq; ++s) {
        const int64_t position = past + s, first = first_key(position, c.window);
        rotate_cpu(static_cast<const Half*>(c.query) + (b * c.seq + s) * c.query_stride + h * hd, cos, sin, position,
                   hd, q.data());
        float top = -INFINITY;
        for (int64_t j = first; j <= position; ++j) {
          to_float(cache_k + j * hd, k.data(), hd);
          scores[j] = capped(dot(q.data(), k.data(), hd) * scale, c.softcap);
          top = std::max(top, scores[j]);
        }
        float total = 0.f;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t j = first; j <= position; ++j) {
          const float p = expf(scores[j] - top);
          total += p;
          to_float(cache_v + j * hd, v.data(), hd);
          for (int64_t d = 0; d < hd; ++d) acc[d] += p * v[d];
        }
        Half* out = static_cast<Half*>(c.out) + (b * c.seq + s) * c.heads * hd + h * hd;
        for (int64_t d = 0; d < hd; ++d) out[d] = static_cast<Half>(acc[d] / total);
      }
    }
  });
}

// A row's positions must fit the caches and the rotary tables (the CUDA kernel cannot say so: it
// reads the lengths on the device, and clamps).
std::string check_lengths(const AttentionCall& c) {
  for (int64_t b = 0; b < c.batch; ++b) {
    const int64_t total = static_cast<int64_t>(c.seqlens[b]) + 1;
    const int64_t past = past_positions(c.seqlens[b], c.seq), end = past + c.seq;
    if (total < 1 || end > c.capacity || end > c.max_positions || past > c.past_capacity) {
      return "row " + std::to_string(b) + " holds " + std::to_string(total) + " positions with " +
             std::to_string(c.seq) + " new tokens: not within the past's " + std::to_string(c.past_capacity) +
             " positions, the present's " + std::to_string(c.capacity) + " and the rotary tables' " +
             std::to_string(c.max_positions);
    }
  }
  return "";
}

}  // namespace

OrtStatus* attention_compute(const Kernel& kernel, OrtKernelContext* context) {
  const OrtValue* in[kInputs] = {};
  size_t given = 0;
  ORT_RETURN_IF_ERROR(inputs_given(kernel, context, &given));
  std::vector<int64_t> dims[kInputs];
  for (size_t i = 0; i < kInputs; ++i) {
    if (i < given) ORT_RETURN_IF_ERROR(input(kernel, context, i, &in[i]));
    if (in[i] != nullptr) ORT_RETURN_IF_ERROR(shape(kernel.api, in[i], &dims[i]));
  }
  const bool packed = in[kKey] == nullptr;
  const std::string why = check(kernel.attention, dims[kQuery], dims[kPastKey], dims[kPastValue], dims[kSeqlens],
                                dims[kTotal], dims[kCos], dims[kSin], packed ? nullptr : &dims[kKey],
                                packed ? nullptr : &dims[kValue]);
  if (!why.empty()) return error(kernel.api, (std::string(kernel.name) + ": " + why).c_str());
  void* p[kInputs] = {};
  for (size_t i = 0; i < kInputs; ++i) {
    if (in[i] != nullptr) ORT_RETURN_IF_ERROR(data(kernel, in[i], &p[i]));
  }
  const AttentionAttrs& a = kernel.attention;
  const std::vector<int64_t>& past = dims[kPastKey];
  const int64_t total = *static_cast<const int32_t*>(p[kTotal]);  // in CPU memory (ops.cc)
  std::vector<int64_t> present = past;
  present[2] = std::max(past[2], total);
  AttentionCall call{};
  call.batch = dims[kQuery][0];
  call.seq = dims[kQuery][1];
  call.heads = a.heads;
  call.kv_heads = a.kv_heads;
  call.head_dim = past[3];
  call.capacity = present[2];
  call.past_capacity = past[2];
  call.max_positions = dims[kCos][0];
  call.query_stride = dims[kQuery][2];
  call.kv_stride = packed ? call.query_stride : a.kv_heads * call.head_dim;
  call.window = a.window;
  call.scale = a.scale;
  call.softcap = a.softcap;
  OrtValue* out[3] = {};
  ORT_RETURN_IF_ERROR(output(kernel, context, {call.batch, call.seq, a.heads * call.head_dim}, &out[0], 0));
  ORT_RETURN_IF_ERROR(output(kernel, context, present, &out[1], 1));
  ORT_RETURN_IF_ERROR(output(kernel, context, present, &out[2], 2));
  const int64_t q_heads = a.heads * call.head_dim;
  call.query = p[kQuery];
  call.key = packed ? static_cast<const Half*>(p[kQuery]) + q_heads : p[kKey];
  call.value = packed ? static_cast<const Half*>(p[kQuery]) + q_heads + a.kv_heads * call.head_dim : p[kValue];
  call.past_key = p[kPastKey];
  call.past_value = p[kPastValue];
  call.seqlens = static_cast<const int32_t*>(p[kSeqlens]);
  call.cos = p[kCos];
  call.sin = p[kSin];
  ORT_RETURN_IF_ERROR(data(kernel, out[0], &call.out));
  ORT_RETURN_IF_ERROR(data(kernel, out[1], &call.present_key));
  ORT_RETURN_IF_ERROR(data(kernel, out[2], &call.present_value));
  if ((call.present_key == call.past_key) != (call.present_value == call.past_value) ||
      (call.present_key == call.past_key && call.capacity != call.past_capacity)) {
    return error(kernel.api, (std::string(kernel.name) + ": present_key and present_value must both share their "
                              "past's buffer, of the same positions, or neither").c_str());
  }
  if (call.batch == 0 || call.seq == 0) return nullptr;
  if (kernel.cuda) {
    void* s = nullptr;
    ORT_RETURN_IF_ERROR(stream(kernel, context, &s));
    const char* failure = attention_cuda(call, s);
    return failure == nullptr ? nullptr : error(kernel.api, failure);
  }
  const std::string lengths = check_lengths(call);
  if (!lengths.empty()) return error(kernel.api, (std::string(kernel.name) + ": " + lengths).c_str());
  copy_past_cpu(call);
  attention_cpu(call);
  return nullptr;
}

}  // namespace optimizer_ops
