// The product's CachedAttention kernel (runtime/custom_ops/attention.cu) behind a C entry point,
// for benchmarks/gpu_attention_probe.py: one call as the custom op makes it at decode (packed
// q/k/v, the caches written in place), on `stream`.
#include <string.h>

#include "cuda_kernels.h"

// 0 on success; 1 with the reason in `error`.
extern "C" int probe_attention(const void* qkv, void* cache_k, void* cache_v, const int* seqlens, const void* cos,
                               const void* sin, void* out, long long batch, long long seq, long long heads,
                               long long kv_heads, long long head_dim, long long capacity, long long max_positions,
                               void* stream, char* error, int error_size) {
  AttentionCall call{};
  const long long width = (heads + 2 * kv_heads) * head_dim;
  call.query = qkv;
  call.key = static_cast<const char*>(qkv) + 2 * heads * head_dim;  // bytes: float16 values
  call.value = static_cast<const char*>(qkv) + 2 * (heads + kv_heads) * head_dim;
  call.past_key = cache_k;
  call.past_value = cache_v;
  call.present_key = cache_k;
  call.present_value = cache_v;
  call.seqlens = seqlens;
  call.cos = cos;
  call.sin = sin;
  call.out = out;
  call.batch = batch;
  call.seq = seq;
  call.heads = heads;
  call.kv_heads = kv_heads;
  call.head_dim = head_dim;
  call.capacity = capacity;
  call.past_capacity = capacity;
  call.max_positions = max_positions;
  call.query_stride = width;
  call.kv_stride = width;
  call.window = -1;
  call.scale = 0.f;
  call.softcap = 0.f;
  const char* failure = attention_cuda(call, stream);
  if (failure == nullptr) return 0;
  strncpy(error, failure, error_size - 1);
  return 1;
}
