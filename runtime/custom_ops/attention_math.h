// CachedAttention's index math and rotary embedding, shared by the CPU loop and the CUDA kernel.
//
// A row b of a call holds L = seqlens_k[b] + 1 positions once its S new tokens are written (the
// contract of onnxruntime's GroupQueryAttention with a shared past/present buffer): the tokens go
// to positions past .. past + S - 1 with past = max(0, L - S). Right-padded rows of a first
// prefill (L < S) thus start at 0, and their padding positions are written too, as GQA does.
// Query s sits at position past + s and reads the keys at positions [first_key, past + s].
#pragma once
#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define ATTENTION_HD __host__ __device__
#else
#define ATTENTION_HD
#endif

// The positions a row held before this call's tokens.
ATTENTION_HD inline int64_t past_positions(int64_t seqlen_k, int64_t new_tokens) {
  const int64_t total = seqlen_k + 1;
  return total > new_tokens ? total - new_tokens : 0;
}

// The first key a query at `position` reads: 0, or the start of its sliding window of `window`
// positions (window <= 0: none), the query's own position the window's last.
ATTENTION_HD inline int64_t first_key(int64_t position, int64_t window) {
  return window > 0 && position >= window ? position - window + 1 : 0;
}

// The rotary tables' row for `position`: tables of `max_positions` rows, the last reused past them.
ATTENTION_HD inline int64_t rotary_row(int64_t position, int64_t max_positions) {
  return position < max_positions - 1 ? position : max_positions - 1;
}

// The scores' scale: the call's, or 1 / sqrt(head size) where it is 0.
ATTENTION_HD inline float attention_scale(float scale, int64_t head_dim) {
  return scale > 0.f ? scale : 1.f / sqrtf(static_cast<float>(head_dim));
}

// A score after the scale: softcap * tanh(score / softcap) where softcap > 0.
ATTENTION_HD inline float capped(float score, float softcap) {
  return softcap > 0.f ? softcap * tanhf(score / softcap) : score;
}

// Rotary embedding of one head, the half-split layout (rotary_interleaved = 0) over the whole
// head: element d < hd/2 pairs with d + hd/2. `first` and `second` are x[d] and x[d + hd/2].
ATTENTION_HD inline float rotated_first(float first, float second, float cos_v, float sin_v) {
  return first * cos_v - second * sin_v;
}
ATTENTION_HD inline float rotated_second(float first, float second, float cos_v, float sin_v) {
  return second * cos_v + first * sin_v;
}
