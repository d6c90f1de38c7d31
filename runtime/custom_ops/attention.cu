// CachedAttention on CUDA (attention_op.cc has the op; attention_math.h the positions): one kernel
// a call, a block per (head, new token, row), of eight warps at small batches and four at large
// (at prefill, blocks of kPrefillQueries new tokens where that is more than 1); from
// kMmaPrefillTokens new tokens a row on, and at decode from kMmaDecodeBlocks blocks on,
// attention_mma.cuh's tensor-core kernels instead.
//
// The block rotates its query (rounded to float16, as the cache's keys are) into shared memory.
// Its warps take the keys 32 at a time, a key a lane for the scores (the whole head's dot
// product) and pairs of head elements a lane for the values (the chunk's value rows loaded into
// registers with its keys, so a chunk waits for memory once), with an online softmax; the warps'
// partial sums are combined at the end. Keys before the row's new tokens come from the cache;
// the new tokens' keys and values straight from the inputs (rotated on the fly), so no block
// waits for another: the first block of each kv head's group writes its tokens' keys and values
// into the cache, for the next call. At batch 1 a decode step's attention is this one launch a
// layer (onnxruntime's GroupQueryAttention: four, UnpackRoPEAppend, GetSequenceLengths, a memset
// and its XQA kernel). It lets the next kernel start early (programmatic dependent launch, pdl.cuh)
// but is not launched as one: the sequence lengths it reads come from a kernel earlier in the step.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "attention_math.h"
#include "attention_mma.cuh"
#include "cuda_kernels.h"
#include "pdl.cuh"

namespace {

constexpr unsigned kAll = 0xffffffffu;

__device__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(kAll, v, offset));
  return v;
}

__device__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kAll, v, offset);
  return v;
}

__device__ float as_half(float v) { return __half2float(__float2half(v)); }

// dots[i] = q[i] . key over a head of kHd elements, for each of the block's kQueries queries in
// shared memory (fp32); `rotate`: the key is a new one, rotated here by the row of cos / sin given
// (and rounded to float16, as it is cached).
template <int kHd, int kQueries>
__device__ void key_dots(const float (*q)[kHd], const __half* key, bool rotate, const __half* cos, const __half* sin,
                         float (&dots)[kQueries]) {
  constexpr int kHalf = kHd / 2;
#pragma unroll
  for (int i = 0; i < kQueries; ++i) dots[i] = 0.f;
#pragma unroll
  for (int d = 0; d < kHalf; d += 8) {
    uint4 first4 = *reinterpret_cast<const uint4*>(key + d);
    uint4 second4 = *reinterpret_cast<const uint4*>(key + d + kHalf);
    const __half* first = reinterpret_cast<const __half*>(&first4);
    const __half* second = reinterpret_cast<const __half*>(&second4);
    if (rotate) {
      uint4 cos4 = *reinterpret_cast<const uint4*>(cos + d);
      uint4 sin4 = *reinterpret_cast<const uint4*>(sin + d);
      const __half* c = reinterpret_cast<const __half*>(&cos4);
      const __half* s = reinterpret_cast<const __half*>(&sin4);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float x1 = __half2float(first[i]), x2 = __half2float(second[i]);
        const float cv = __half2float(c[i]), sv = __half2float(s[i]);
        const float k1 = as_half(rotated_first(x1, x2, cv, sv)), k2 = as_half(rotated_second(x1, x2, cv, sv));
#pragma unroll
        for (int qi = 0; qi < kQueries; ++qi) {
          dots[qi] += q[qi][d + i] * k1;
          dots[qi] += q[qi][d + kHalf + i] * k2;
        }
      }
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float k1 = __half2float(first[i]), k2 = __half2float(second[i]);
#pragma unroll
        for (int qi = 0; qi < kQueries; ++qi) dots[qi] += q[qi][d + i] * k1 + q[qi][d + kHalf + i] * k2;
      }
    }
  }
}

// A lane's share of a head's value row: element pairs lane, lane + 32, ... (kPairs of them, those
// past the head's end left out), so each step of the warp reads consecutive pairs.
template <int kHd>
struct LanePairs {
  static constexpr int kPairs = (kHd / 2 + 31) / 32;
  __device__ static bool has(int lane, int i) { return lane + 32 * i < kHd / 2; }
};

// The value rows of keys base + k0 .. base + k0 + kBatch - 1 (those up to `keys` of the chunk; the
// rest zeros), the lane's pairs of each, into registers: issued together, so a chunk waits for
// memory once, not once a key.
template <int kHd, int kBatch>
__device__ void load_values(__half2 (&held)[kBatch][LanePairs<kHd>::kPairs], int64_t base, int k0, int keys,
                            int64_t past, const __half* cache_v, const __half* new_values, int64_t kv_stride,
                            int lane) {
  using Pairs = LanePairs<kHd>;
#pragma unroll
  for (int k = 0; k < kBatch; ++k) {
    const int64_t j = base + k0 + k;
    const __half2* row = reinterpret_cast<const __half2*>(j >= past ? new_values + (j - past) * kv_stride
                                                                    : cache_v + j * kHd);
#pragma unroll
    for (int i = 0; i < Pairs::kPairs; ++i) {
      held[k][i] = k0 + k < keys && Pairs::has(lane, i) ? row[lane + 32 * i] : __float2half2_rn(0.f);
    }
  }
}

// A head of kHd elements (one of HeadSizes'); kWarps warps split its keys; the block's kQueries
// queries share each key and value row the warps read: consecutive new tokens of a row (1 at
// decode), or with kHeads the query heads of one kv head's group at one new token (blockIdx.x
// then numbers the group's tiles of kQueries heads).
template <int kHd, int kWarps, int kQueries, bool kHeads = false>
__global__ void __launch_bounds__(kWarps * 32) cached_attention(AttentionCall c) {
  using Pairs = LanePairs<kHd>;
  constexpr int kThreads = kWarps * 32;
  constexpr int kHalf = kHd / 2;
  constexpr int kBatch = Pairs::kPairs <= 2 && kQueries == 1 ? 32 : 16;  // value rows held at once
  __shared__ float q[kQueries][kHd];
  __shared__ float warp_top[kWarps][kQueries], warp_total[kWarps][kQueries];
  __shared__ float warp_acc[kWarps][kQueries][kHd];

  // The next kernel (the o projection's GEMV, where launched as a programmatic dependent) may start
  // its weights' prefetch now; it waits for this one's end before reading its output.
  optimizer_pdl::let_next_start();
  const int64_t group = c.heads / c.kv_heads, tiles = kHeads ? (group + kQueries - 1) / kQueries : 1;
  // the block's first query head h (the others, with kHeads: h + 1, ...) and new token s0 (with
  // kQueries tokens: s0 + 1, ...), its kv head g
  const int64_t g = kHeads ? blockIdx.x / tiles : blockIdx.x / group;
  const int64_t h = kHeads ? g * group + (blockIdx.x % tiles) * kQueries : blockIdx.x;
  const int64_t s0 = static_cast<int64_t>(blockIdx.y) * (kHeads ? 1 : kQueries), b = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t past = past_positions(c.seqlens[b], c.seq);
  const int64_t left = kHeads ? g * group + group - h : c.seq - s0;  // queries from the block's first on
  const int queries = kQueries == 1 ? 1 : static_cast<int>(left < kQueries ? left : kQueries);
  const int64_t last_table_row = c.max_positions - 1;
  const __half* cos = static_cast<const __half*>(c.cos);
  const __half* sin = static_cast<const __half*>(c.sin);
  const __half* new_keys = static_cast<const __half*>(c.key) + b * c.seq * c.kv_stride + g * kHd;
  const __half* new_values = static_cast<const __half*>(c.value) + b * c.seq * c.kv_stride + g * kHd;

#pragma unroll
  for (int qi = 0; qi < kQueries; ++qi) {  // the queries, rotated; their keys and values into the cache
    if (qi >= queries) break;
    const int64_t s = kHeads ? s0 : s0 + qi, position = past + s;
    const int64_t rope_row = (position < last_table_row ? position : last_table_row) * kHalf;
    const __half* q_in =
        static_cast<const __half*>(c.query) + (b * c.seq + s) * c.query_stride + (kHeads ? h + qi : h) * kHd;
    for (int d = threadIdx.x; d < kHalf; d += kThreads) {
      const float x1 = __half2float(q_in[d]), x2 = __half2float(q_in[d + kHalf]);
      const float cv = __half2float(cos[rope_row + d]), sv = __half2float(sin[rope_row + d]);
      q[qi][d] = as_half(rotated_first(x1, x2, cv, sv));
      q[qi][d + kHalf] = as_half(rotated_second(x1, x2, cv, sv));
    }
    if (h % group == 0 && (!kHeads || qi == 0) && position < c.capacity) {  // the kv group's first block
      const __half* k_in = new_keys + s * c.kv_stride;
      const int64_t at = ((b * c.kv_heads + g) * c.capacity + position) * kHd;
      __half* k_out = static_cast<__half*>(c.present_key) + at;
      __half* v_out = static_cast<__half*>(c.present_value) + at;
      for (int d = threadIdx.x; d < kHalf; d += kThreads) {
        const float x1 = __half2float(k_in[d]), x2 = __half2float(k_in[d + kHalf]);
        const float cv = __half2float(cos[rope_row + d]), sv = __half2float(sin[rope_row + d]);
        k_out[d] = __float2half(rotated_first(x1, x2, cv, sv));
        k_out[d + kHalf] = __float2half(rotated_second(x1, x2, cv, sv));
      }
      for (int d = threadIdx.x; d < kHd; d += kThreads) v_out[d] = new_values[s * c.kv_stride + d];
    }
  }
  __syncthreads();

  const int64_t past_offset = (b * c.kv_heads + g) * c.past_capacity * kHd;
  const __half* cache_k = static_cast<const __half*>(c.past_key) + past_offset;  // keys before `past`
  const __half* cache_v = static_cast<const __half*>(c.past_value) + past_offset;
  const float scale = c.scale > 0.f ? c.scale : rsqrtf(static_cast<float>(kHd));
  const int64_t first = first_key(past + s0, c.window);  // the first query's: the earliest any reads
  const int64_t last_position = past + s0 + (kHeads ? 0 : queries - 1);
  const int64_t last = last_position < c.capacity ? last_position : c.capacity - 1;
  float top[kQueries], total[kQueries], acc[kQueries][2 * Pairs::kPairs];
#pragma unroll
  for (int qi = 0; qi < kQueries; ++qi) {
    top[qi] = -INFINITY;
    total[qi] = 0.f;
#pragma unroll
    for (int i = 0; i < 2 * Pairs::kPairs; ++i) acc[qi][i] = 0.f;
  }
  __half2 held[kBatch][Pairs::kPairs];
  for (int64_t base = first + warp * 32; base <= last; base += kWarps * 32) {
    const int64_t j = base + lane;
    const int keys = static_cast<int>(last - base + 1 < 32 ? last - base + 1 : 32);
    load_values<kHd, kBatch>(held, base, 0, keys, past, cache_v, new_values, c.kv_stride, lane);  // in flight
    float score[kQueries];  // with the keys' loads
    bool valid[kQueries];
#pragma unroll
    for (int qi = 0; qi < kQueries; ++qi) {  // whether key j is in query qi's causal window
      const int64_t position = past + s0 + (kHeads ? 0 : qi);
      valid[qi] = j <= last &&
                  (kQueries == 1 || (qi < queries && j <= position && j >= first_key(position, c.window)));
      score[qi] = -INFINITY;
    }
    if (j <= last) {
      const bool fresh = j >= past;
      const int64_t row = (j < last_table_row ? j : last_table_row) * kHalf;
      const __half* key = fresh ? new_keys + (j - past) * c.kv_stride : cache_k + j * kHd;
      float dots[kQueries];
      key_dots<kHd, kQueries>(q, key, fresh, cos + row, sin + row, dots);
#pragma unroll
      for (int qi = 0; qi < kQueries; ++qi) {
        if (valid[qi]) score[qi] = capped(dots[qi] * scale, c.softcap);
      }
    }
    float p[kQueries];
#pragma unroll
    for (int qi = 0; qi < kQueries; ++qi) {  // the online softmax; at decode lane 0's key is in range
      const float top_now = fmaxf(top[qi], warp_max(score[qi]));
      p[qi] = valid[qi] ? __expf(score[qi] - top_now) : 0.f;
      const float correction = kQueries == 1 || top_now > -INFINITY ? __expf(top[qi] - top_now) : 1.f;
      total[qi] = total[qi] * correction + warp_sum(p[qi]);
      top[qi] = top_now;
#pragma unroll
      for (int i = 0; i < 2 * Pairs::kPairs; ++i) acc[qi][i] *= correction;
    }
#pragma unroll
    for (int k0 = 0; k0 < 32; k0 += kBatch) {
      if (k0 > 0) {
        if (k0 >= keys) break;
        load_values<kHd, kBatch>(held, base, k0, keys, past, cache_v, new_values, c.kv_stride, lane);
      }
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
#pragma unroll
        for (int qi = 0; qi < kQueries; ++qi) {
          const float pk = __shfl_sync(kAll, p[qi], k0 + k);  // 0 past the chunk's keys, as are their values
#pragma unroll
          for (int i = 0; i < Pairs::kPairs; ++i) {
            const float2 pair = __half22float2(held[k][i]);
            acc[qi][2 * i] += pk * pair.x;
            acc[qi][2 * i + 1] += pk * pair.y;
          }
        }
      }
    }
  }
#pragma unroll
  for (int qi = 0; qi < kQueries; ++qi) {
    if (lane == 0) {
      warp_top[warp][qi] = top[qi];
      warp_total[warp][qi] = total[qi];
    }
#pragma unroll
    for (int i = 0; i < Pairs::kPairs; ++i) {
      if (!Pairs::has(lane, i)) continue;
      warp_acc[warp][qi][2 * (lane + 32 * i)] = acc[qi][2 * i];
      warp_acc[warp][qi][2 * (lane + 32 * i) + 1] = acc[qi][2 * i + 1];
    }
  }
  __syncthreads();
#pragma unroll
  for (int qi = 0; qi < kQueries; ++qi) {  // each query's warps combined
    if (qi >= queries) break;
    __half* out = static_cast<__half*>(c.out) + (b * c.seq + s0 + (kHeads ? 0 : qi)) * c.heads * kHd +
                  (kHeads ? h + qi : h) * kHd;
    for (int d = threadIdx.x; d < kHd; d += kThreads) {
      float best = -INFINITY;
      for (int w = 0; w < kWarps; ++w) best = fmaxf(best, warp_top[w][qi]);
      float weight = 0.f, value = 0.f;
      for (int w = 0; w < kWarps; ++w) {
        if (warp_top[w][qi] == -INFINITY) continue;  // a warp that had no keys
        const float f = __expf(warp_top[w][qi] - best);
        weight += warp_total[w][qi] * f;
        value += warp_acc[w][qi][d] * f;
      }
      out[d] = __float2half(weight > 0.f ? value / weight : 0.f);
    }
  }
}

// Eight warps a block where the grid is small (decode at small batches: each warp then has fewer
// chunks of keys to go through one after the other), four where blocks alone fill the GPU.
constexpr int64_t kFewBlocks = 264;  // two an SM on an H100 / H200
// New tokens a block takes at prefill (seq > 1), sharing the keys and values its warps read
// (benchmarks/gpu_attention_probe.py, run15, H200, batch 1, a layer: 1B first prefill of 128 tokens
// 39.8 us with 1, 25.8 with 4, 34.7 with 8; of 2,048: 4.93 / 2.30 / 2.11 ms; 8B alike).
constexpr int kPrefillQueries = 4;
// New tokens a row from which a call takes attention_mma.cuh's tensor-core prefill instead (head sizes
// up to its kMostHeadDim; 0: never): a block of 64 new tokens a query head, so fewer than 16 waste
// most of its MMAs' rows (speculative decoding's verification calls take 2-8).
constexpr int64_t kMmaPrefillTokens = 16;
// Blocks (kv heads x rows) from which a call of fewer new tokens takes attention_mma.cuh's decode kernel
// (a block a kv head's group of query heads at each new token, at most 16 of them; 0: never). Below it,
// the kernel here, whose blocks of eight warps a query head keep more of the GPU busy at small batches.
constexpr int64_t kMmaDecodeBlocks = 128;

// OPTIMIZER_ATTN_TENSOR_CORES: "on" (or unset) as above; "off", every call through the CUDA-core
// kernel below (to compare the two in one build); anything else refused.
enum class TensorCores { kOn, kOff, kUnknown };

TensorCores tensor_cores_choice() {
  static const TensorCores choice = [] {
    const char* v = std::getenv("OPTIMIZER_ATTN_TENSOR_CORES");
    if (v == nullptr || std::strcmp(v, "on") == 0) return TensorCores::kOn;
    return std::strcmp(v, "off") == 0 ? TensorCores::kOff : TensorCores::kUnknown;
  }();
  return choice;
}

// Query heads of a kv group a block takes at decode where the grid is large, each key and value
// row read once a group, not once a head (0: a block per head). run15, batch 64, 256 positions, a
// layer: 1B 42.2 us a block per head, 23.8 with 4; 8B 66.3 / 52.6; batch 1 unchanged (small grid).
constexpr int kGroupQueries = 4;

// Blocks of kQueries new tokens each; several a block: four warps (the prefill's grid is large, and
// the warps' partial sums, kWarps x kQueries x kHd floats, must fit shared memory).
template <int kHd, int kQueries>
void launch_blocks(const AttentionCall& c, cudaStream_t stream) {
  const int64_t tiles = (c.seq + kQueries - 1) / kQueries;
  const dim3 grid(static_cast<unsigned>(c.heads), static_cast<unsigned>(tiles), static_cast<unsigned>(c.batch));
  if (kQueries == 1 && c.heads * tiles * c.batch < kFewBlocks) {
    cached_attention<kHd, 8, 1><<<grid, 8 * 32, 0, stream>>>(c);
  } else {
    cached_attention<kHd, 4, kQueries><<<grid, 4 * 32, 0, stream>>>(c);
  }
}

template <int kHd>
void launch(const AttentionCall& c, cudaStream_t stream) {
  if constexpr (kHd <= attention_mma::kMostHeadDim) {
    const bool on = tensor_cores_choice() == TensorCores::kOn;
    if (on && kMmaPrefillTokens > 0 && c.seq >= kMmaPrefillTokens) return attention_mma::launch<kHd>(c, stream);
    if (on && kMmaDecodeBlocks > 0 && c.kv_heads * c.batch >= kMmaDecodeBlocks && attention_mma::decode_fits(c)) {
      return attention_mma::launch_decode<kHd>(c, stream);
    }
  }
  if constexpr (kGroupQueries > 0) {
    constexpr int kTile = kGroupQueries > 0 ? kGroupQueries : 1;  // (no division by 0 where unused)
    const int64_t group = c.heads / c.kv_heads, tiles = (group + kTile - 1) / kTile;
    if (c.seq == 1 && c.kv_heads * tiles * c.batch >= kFewBlocks) {
      const dim3 grid(static_cast<unsigned>(c.kv_heads * tiles), 1, static_cast<unsigned>(c.batch));
      cached_attention<kHd, 4, kGroupQueries, true><<<grid, 4 * 32, 0, stream>>>(c);
      return;
    }
  }
  if constexpr (kPrefillQueries > 1) {
    if (c.seq > 1) return launch_blocks<kHd, kPrefillQueries>(c, stream);
  }
  launch_blocks<kHd, 1>(c, stream);
}

// The head sizes with a kernel (each a multiple of 16: a key is read 8 values at a time from each
// half of the head); passes/custom_attention.py's HEAD_SIZES lists the same. Each more is two
// kernels per architecture to compile.
template <int... kSizes>
struct HeadSizes {
  static bool has(int64_t head_dim) { return ((head_dim == kSizes) || ...); }
  static void launch_for(int64_t head_dim, const AttentionCall& c, cudaStream_t stream) {
    ((head_dim == kSizes ? launch<kSizes>(c, stream) : void()), ...);
  }
};
using Supported = HeadSizes<16, 32, 64, 80, 96, 128, 256>;

}  // namespace

const char* attention_cuda(const AttentionCall& c, void* stream) {
  if (!Supported::has(c.head_dim)) {
    return "CachedAttention on CUDA: no kernel for this head size (16, 32, 64, 80, 96, 128 and 256 have one)";
  }
  if (tensor_cores_choice() == TensorCores::kUnknown) {
    return "CachedAttention on CUDA: OPTIMIZER_ATTN_TENSOR_CORES must be on (prefills, and decode steps at large "
           "batches, on tensor cores: the default) or off (every call on the CUDA-core kernel)";
  }
  if (c.seq > 65535 || c.batch > 65535) {
    return "CachedAttention on CUDA: more than 65535 rows or new tokens in one call";
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (c.present_key != c.past_key && c.past_capacity > 0) {  // the past into the present's first positions
    const size_t from = c.past_capacity * c.head_dim * sizeof(__half), to = c.capacity * c.head_dim * sizeof(__half);
    const size_t rows = c.batch * c.kv_heads;
    cudaMemcpy2DAsync(c.present_key, to, c.past_key, from, from, rows, cudaMemcpyDeviceToDevice, s);
    cudaMemcpy2DAsync(c.present_value, to, c.past_value, from, from, rows, cudaMemcpyDeviceToDevice, s);
  }
  Supported::launch_for(c.head_dim, c, s);
  const cudaError_t launched = cudaGetLastError();
  return launched == cudaSuccess ? nullptr : cudaGetErrorString(launched);
}
