// CachedAttention on tensor cores (head sizes up to 128): attention.cu launches the prefill's kernels
// for calls of at least kMmaPrefillTokens new tokens a row, the decode kernel (decode_attention,
// below) for calls of a few where the grid is large enough; a header of its own so that
// tests/test_attention_mma_emulated.py runs this very source on the CPU (tests/cuda_emulation.h).
//
// The prefill, two kernels. append_new_tokens writes each new token's key (rotated, rounded to float16) and value
// into the cache, once a kv head. prefill_attention then takes kQueries (64) consecutive new tokens of
// one query head of one row a block, each of its four warps 16 of them (an MMA's rows): its queries
// rotated into registers; the keys and their values kKeys (64) at a time from the cache into shared
// memory by cp.async, the next step's copied while this one's are used (two stages); each warp's scores
// Q K^T and its sums P V by mma.sync m16n8k16 (float16 in, float32 sums; the values' B fragments by
// ldmatrix .trans), with FlashAttention-2's online softmax: each row's running maximum and total in
// registers, P rounded to float16 for its MMA. The contract is attention.cu's kernel's (rotary
// embedding, the new keys and values into the cache, causal attention with sliding window and
// softcap); the outputs agree with it but for P's rounding.
#pragma once
#include <math.h>
#include <stdint.h>

#include <atomic>

#include "attention_math.h"
#include "cuda_kernels.h"
#include "device_primitives.cuh"

namespace attention_mma {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kQueries = 16 * kWarps;  // new tokens a block
constexpr int kKeys = 64;              // keys a step
constexpr int kMostHeadDim = 128;      // o, the scores and the queries' fragments in registers

// The block's shared memory, in float16 values: two stages (a step's keys in one while the next
// step's arrive in the other), each the step's keys and then its values, a row of kHd a key. Rows are
// 8 values longer than their data, so that the 8 rows a fragment's read spans fall in different banks.
// Before the first step the block's rotated queries (kQueries = kKeys rows) pass through the second
// stage's keys.
template <int kHd>
struct Shared {
  static constexpr int kRow = kHd + 8;
  static constexpr int kTile = kKeys * kRow;  // a stage's keys, or its values
  static constexpr int kHalves = 4 * kTile;
  static constexpr size_t kBytes = 2 * static_cast<size_t>(kHalves);
  static_assert(kQueries <= kKeys, "the queries pass through a stage's keys");
};

__device__ __forceinline__ uint4 load16(const uint16_t* p) { return *reinterpret_cast<const uint4*>(p); }
__device__ __forceinline__ void store16(uint16_t* p, const uint4& v) { *reinterpret_cast<uint4*>(p) = v; }
// Two float16 (bits) as an MMA register, the first in its low half.
__device__ __forceinline__ uint32_t pair_at(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint32_t pack(float low, float high) {
  return static_cast<uint32_t>(device_primitives::float_half(low)) |
         static_cast<uint32_t>(device_primitives::float_half(high)) << 16;
}

// Elements [8c, 8c + 8) and [kHd / 2 + 8c, ...) of a head (`head`, float16) into `first` and `second`,
// where `rotate` rotated by the rotary tables' row `table_row` and rounded to float16 (attention_math.h).
template <int kHd>
__device__ __forceinline__ void head_chunks(const uint16_t* head, int c, bool rotate, const uint16_t* cos,
                                            const uint16_t* sin, int64_t table_row, uint4& first, uint4& second) {
  using device_primitives::float_half;
  using device_primitives::half_float;
  first = load16(head + 8 * c);
  second = load16(head + kHd / 2 + 8 * c);
  if (!rotate) return;
  const uint4 cos8 = load16(cos + table_row * (kHd / 2) + 8 * c), sin8 = load16(sin + table_row * (kHd / 2) + 8 * c);
  uint16_t* x1 = reinterpret_cast<uint16_t*>(&first);
  uint16_t* x2 = reinterpret_cast<uint16_t*>(&second);
  const uint16_t* cv = reinterpret_cast<const uint16_t*>(&cos8);
  const uint16_t* sv = reinterpret_cast<const uint16_t*>(&sin8);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float a = half_float(x1[i]), b = half_float(x2[i]), cs = half_float(cv[i]), sn = half_float(sv[i]);
    x1[i] = float_half(rotated_first(a, b, cs, sn));
    x2[i] = float_half(rotated_second(a, b, cs, sn));
  }
}

// Chunk `ch` (head_chunks') of new token s's key in kv head g of row b, rotated for its `position` and
// rounded to float16, and of its value, into the cache at that position (below its capacity).
template <int kHd>
__device__ __forceinline__ void append_chunk(const AttentionCall& c, int64_t b, int64_t g, int64_t s,
                                             int64_t position, int ch) {
  constexpr int kHalf = kHd / 2;
  const int64_t in = (b * c.seq + s) * c.kv_stride + g * kHd;
  const uint16_t* key = static_cast<const uint16_t*>(c.key) + in;
  const uint16_t* value = static_cast<const uint16_t*>(c.value) + in;
  uint4 first, second;
  head_chunks<kHd>(key, ch, true, static_cast<const uint16_t*>(c.cos), static_cast<const uint16_t*>(c.sin),
                   rotary_row(position, c.max_positions), first, second);
  const int64_t at = ((b * c.kv_heads + g) * c.capacity + position) * kHd;
  uint16_t* k_out = static_cast<uint16_t*>(c.present_key) + at;
  uint16_t* v_out = static_cast<uint16_t*>(c.present_value) + at;
  store16(k_out + 8 * ch, first);
  store16(k_out + kHalf + 8 * ch, second);
  store16(v_out + 8 * ch, load16(value + 8 * ch));
  store16(v_out + kHalf + 8 * ch, load16(value + kHalf + 8 * ch));
}

// Each new token's key, rotated and rounded to float16, and its value into the cache (positions
// below its capacity), every kv head's: a block a (new token, row).
template <int kHd>
__global__ void __launch_bounds__(kThreads) append_new_tokens(AttentionCall c) {
  constexpr int kChunks = kHd / 16;
  const int64_t s = blockIdx.x, b = blockIdx.y;
  const int64_t position = past_positions(c.seqlens[b], c.seq) + s;
  if (position >= c.capacity) return;
  for (int i = threadIdx.x; i < c.kv_heads * kChunks; i += kThreads) {
    append_chunk<kHd>(c, b, i / kChunks, s, position, i % kChunks);
  }
}

// Chunk `ch` (head_chunks') of new token s's query head h in row b, rotated for `position` and rounded to
// float16, into row r of `queries` in shared memory (a row of kHd + 8); zeros where not `real`.
template <int kHd>
__device__ __forceinline__ void store_query_chunk(uint16_t* queries, int r, int ch, bool real, const AttentionCall& c,
                                                  int64_t b, int64_t s, int64_t h, int64_t position) {
  uint4 first{}, second{};
  if (real) {
    const uint16_t* q = static_cast<const uint16_t*>(c.query) + (b * c.seq + s) * c.query_stride + h * kHd;
    head_chunks<kHd>(q, ch, true, static_cast<const uint16_t*>(c.cos), static_cast<const uint16_t*>(c.sin),
                     rotary_row(position, c.max_positions), first, second);
  }
  store16(queries + r * (kHd + 8) + 8 * ch, first);
  store16(queries + r * (kHd + 8) + kHd / 2 + 8 * ch, second);
}

// 16 rows of queries in shared memory (a row of kHd + 8) as the lane's A fragments, a step of 16 head
// elements each.
template <int kHd>
__device__ __forceinline__ void query_fragments(const uint16_t* rows, uint32_t (&qf)[kHd / 16][4]) {
  constexpr int kRow = kHd + 8;
  const int lane = threadIdx.x % 32, lg = lane / 4, lt = lane % 4;
#pragma unroll
  for (int kk = 0; kk < kHd / 16; ++kk) {
    qf[kk][0] = pair_at(rows + lg * kRow + 16 * kk + 2 * lt);
    qf[kk][1] = pair_at(rows + (lg + 8) * kRow + 16 * kk + 2 * lt);
    qf[kk][2] = pair_at(rows + lg * kRow + 16 * kk + 8 + 2 * lt);
    qf[kk][3] = pair_at(rows + (lg + 8) * kRow + 16 * kk + 8 + 2 * lt);
  }
}

// kCount keys and their values from position `from` on (those past `last` zeros), copied from the cache
// into `stage` (kCount rows of keys, then of values) in the background (cp.async) by threads `worker`
// of `workers`, one commit group.
template <int kHd, int kCount>
__device__ __forceinline__ void fetch_keys(uint16_t* stage, const uint16_t* cache_k, const uint16_t* cache_v,
                                           int64_t from, int64_t last, int worker, int workers) {
  constexpr int kRow = kHd + 8, kChunks = kHd / 8;  // 16 bytes each
  for (int i = worker; i < kCount * kChunks; i += workers) {
    const int k = i / kChunks, ch = i % kChunks;
    const int64_t j = from + k;
    const bool valid = j <= last;
    const int64_t at = (valid ? j : last) * kHd + 8 * ch;  // an address in the cache either way
    device_primitives::copy_async(stage + k * kRow + 8 * ch, cache_k + at, valid);
    device_primitives::copy_async(stage + (kCount + k) * kRow + 8 * ch, cache_v + at, valid);
  }
  device_primitives::commit_async();
}

// The warp's 16 rows (queries `qf` as A fragments) over kKeyTiles * 8 keys from position `base` on
// (`keys` and `values` in shared memory, a row of kHd + 8 a key): the scores, each row's mask (keys
// after `last` or its `position`, before its sliding window; rows not `real`), FlashAttention-2's
// online softmax (`top`: each row's running maximum, `total`: this lane's columns' share of its sum)
// and o += P V. Lane (g, t) holds rows g and g + 8 (index 0 and 1 of the pairs).
template <int kHd, int kKeyTiles>
__device__ __forceinline__ void attend(const uint32_t (&qf)[kHd / 16][4], const uint16_t* keys, const uint16_t* values,
                                       int64_t base, int64_t last, const int64_t (&position)[2],
                                       const bool (&real)[2], const AttentionCall& c, float scale, float (&top)[2],
                                       float (&total)[2], float (&o)[kHd / 8][4]) {
  using device_primitives::warp_xor;
  constexpr int kRow = kHd + 8, kSteps = kHd / 16, kTiles = kHd / 8;
  static_assert(kKeyTiles % 2 == 0, "P V takes keys 16 at a time");
  const int lane = threadIdx.x % 32, lg = lane / 4, lt = lane % 4;
  float sc[kKeyTiles][4];
#pragma unroll
  for (int n = 0; n < kKeyTiles; ++n) {
    sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
    const uint16_t* row = keys + (8 * n + lg) * kRow + 2 * lt;
#pragma unroll
    for (int kk = 0; kk < kSteps; ++kk) {
      device_primitives::mma(sc[n], qf[kk], pair_at(row + 16 * kk), pair_at(row + 16 * kk + 8));
    }
  }
  float step_top[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {  // element e: row lg + 8 (e / 2), key 8n + 2 lt + e % 2
      const int r = e / 2;
      const int64_t j = base + 8 * n + 2 * lt + e % 2;
      const bool valid = real[r] && j <= last && j <= position[r] && j >= first_key(position[r], c.window);
      sc[n][e] = valid ? capped(sc[n][e] * scale, c.softcap) : -INFINITY;
      step_top[r] = fmaxf(step_top[r], sc[n][e]);
    }
  }
  float correction[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {  // a row's four lanes agree on its maximum
    step_top[r] = fmaxf(step_top[r], warp_xor(step_top[r], 1));
    step_top[r] = fmaxf(step_top[r], warp_xor(step_top[r], 2));
    const float now = fmaxf(top[r], step_top[r]);
    correction[r] = now == -INFINITY ? 1.f : device_primitives::fast_exp(top[r] - now);
    top[r] = now;
    total[r] *= correction[r];
  }
#pragma unroll
  for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float p = sc[n][e] == -INFINITY ? 0.f : device_primitives::fast_exp(sc[n][e] - top[e / 2]);
      sc[n][e] = p;
      total[e / 2] += p;
    }
  }
#pragma unroll
  for (int n = 0; n < kTiles; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) o[n][e] *= correction[e / 2];
  }
  // lane l's row for the values' transposed loads: matrix l / 8 (keys + 8 (m % 2), elements + 8 (m / 2))
  const int value_row = 8 * (lane / 8 % 2) + lane % 8, value_column = 8 * (lane / 16);
#pragma unroll
  for (int kk = 0; kk < kKeyTiles / 2; ++kk) {  // o += P V, a step of 16 keys at a time
    const uint32_t pf[4] = {pack(sc[2 * kk][0], sc[2 * kk][1]), pack(sc[2 * kk][2], sc[2 * kk][3]),
                            pack(sc[2 * kk + 1][0], sc[2 * kk + 1][1]), pack(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
    for (int n = 0; n < kTiles; n += 2) {  // two tiles of 8 head elements a load: B's registers of each
      uint32_t vf[4];
      device_primitives::load_matrices_transposed(vf, values + (16 * kk + value_row) * kRow + 8 * n + value_column);
      device_primitives::mma(o[n], pf, vf[0], vf[1]);
      device_primitives::mma(o[n + 1], pf, vf[2], vf[3]);
    }
  }
}

// Attention over the cache (append_new_tokens' writes included): a block a (query head, kQueries new
// tokens, row).
template <int kHd>
__global__ void __launch_bounds__(kThreads) prefill_attention(AttentionCall c) {
  static_assert(kHd % 16 == 0 && kHd <= kMostHeadDim, "a head of whole MMA steps, its sums in registers");
  using S = Shared<kHd>;
  using device_primitives::warp_xor;
  constexpr int kChunks = kHd / 16;  // 8-value chunks of half a head
  constexpr int kSteps = kHd / 16, kTiles = kHd / 8;
  device_primitives::start_next_kernel();
  uint16_t* stages = reinterpret_cast<uint16_t*>(device_primitives::block_shared());
  const int64_t h = blockIdx.x, b = blockIdx.z, group = c.heads / c.kv_heads, g = h / group;
  const int64_t s0 = static_cast<int64_t>(blockIdx.y) * kQueries;
  const int rows = static_cast<int>(c.seq - s0 < kQueries ? c.seq - s0 : kQueries);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, lg = lane / 4, lt = lane % 4;  // fragments' (g, t)
  const int64_t past = past_positions(c.seqlens[b], c.seq);
  const int64_t cache_offset = (b * c.kv_heads + g) * c.capacity * kHd;  // the row's keys, the new ones written
  const uint16_t* cache_k = static_cast<const uint16_t*>(c.present_key) + cache_offset;
  const uint16_t* cache_v = static_cast<const uint16_t*>(c.present_value) + cache_offset;
  const int64_t first = first_key(past + s0, c.window);  // the block's first query's: the earliest any reads
  const int64_t last_position = past + s0 + rows - 1;
  const int64_t last = last_position < c.capacity ? last_position : c.capacity - 1;
  const int64_t steps = last >= first ? (last - first) / kKeys + 1 : 0;
  if (steps > 0) fetch_keys<kHd, kKeys>(stages, cache_k, cache_v, first, last, threadIdx.x, kThreads);

  // The block's queries, rotated, through the second stage's keys into the warps' A fragments
  uint16_t* queries = stages + 2 * S::kTile;
  for (int i = threadIdx.x; i < kQueries * kChunks; i += kThreads) {
    const int r = i % kQueries;
    store_query_chunk<kHd>(queries, r, i / kQueries, r < rows, c, b, s0 + r, h, past + s0 + r);
  }
  __syncthreads();
  uint32_t qf[kSteps][4];  // the warp's 16 queries as A fragments, a step of 16 head elements each
  query_fragments<kHd>(queries + 16 * warp * S::kRow, qf);
  __syncthreads();  // the second stage now takes keys

  const float scale = attention_scale(c.scale, kHd);
  // this lane's two rows (lg and lg + 8 of the warp's 16): their positions, whether they are tokens
  const int64_t position[2] = {past + s0 + 16 * warp + lg, past + s0 + 16 * warp + lg + 8};
  const bool real[2] = {16 * warp + lg < rows, 16 * warp + lg + 8 < rows};
  const int64_t warp_last = past + s0 + 16 * warp + 15;  // keys after it are no row's of the warp
  float top[2] = {-INFINITY, -INFINITY}, total[2] = {0.f, 0.f};  // total: this lane's columns' share
  float o[kTiles][4];
#pragma unroll
  for (int n = 0; n < kTiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

  for (int64_t step = 0; step < steps; ++step) {
    if (step + 1 < steps) {
      fetch_keys<kHd, kKeys>(stages + (step + 1) % 2 * 2 * S::kTile, cache_k, cache_v, first + (step + 1) * kKeys,
                             last, threadIdx.x, kThreads);
    } else {
      device_primitives::commit_async();  // (an empty group: one in flight after this step's, as above)
    }
    device_primitives::wait_async<1>();  // this thread's copies of the step
    __syncthreads();                     // everyone's
    const int64_t base = first + step * kKeys;
    const uint16_t* keys = stages + step % 2 * 2 * S::kTile;
    const uint16_t* values = keys + S::kTile;
    if (base <= warp_last) {  // (the same for the whole warp) keys its rows may read
      attend<kHd, kKeys / 8>(qf, keys, values, base, last, position, real, c, scale, top, total, o);
    }
    __syncthreads();  // every warp is done with the stage before the next step's copies overwrite it
  }
  device_primitives::wait_async<0>();  // (the last, empty group)
  uint16_t* out = static_cast<uint16_t*>(c.out);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    total[r] += warp_xor(total[r], 1);
    total[r] += warp_xor(total[r], 2);
    if (!real[r]) continue;
    const float inverse = total[r] > 0.f ? 1.f / total[r] : 0.f;
    uint16_t* row = out + (b * c.seq + s0 + 16 * warp + lg + 8 * r) * c.heads * kHd + h * kHd + 2 * lt;
#pragma unroll
    for (int n = 0; n < kTiles; ++n) {
      *reinterpret_cast<uint32_t*>(row + 8 * n) = pack(o[n][2 * r] * inverse, o[n][2 * r + 1] * inverse);
    }
  }
}

// Decode steps (and calls of a few new tokens a row): a block a (kv head, row), its MMA's 16 rows
// the group's query heads at each new token (head r % group at token r / group, group x new tokens
// <= kDecodeRows), so each key and value is read once a group; its four warps each take every fourth
// step of kDecodeKeys keys (two cp.async stages a warp), their rows' sums combined at the end. The
// block first writes its kv head's new keys (rotated) and values into the cache, which only it reads.
constexpr int kDecodeKeys = 16;  // keys a warp's step
constexpr int kDecodeRows = 16;  // query heads x new tokens a block

template <int kHd>
struct DecodeShared {
  static constexpr int kRow = kHd + 8;
  static constexpr int kTile = kDecodeKeys * kRow;     // a warp's step of keys, or of values
  static constexpr int kWarpHalves = 4 * kTile;         // its two stages
  static constexpr int kQueryHalves = kDecodeRows * kRow;
  static constexpr size_t kBytes = 2 * static_cast<size_t>(kQueryHalves + kWarps * kWarpHalves);
  // after the keys, over the stages: each warp's rows' sums (kDecodeRows x kHd floats), maxima, totals
  static constexpr size_t kCombineBytes = sizeof(float) * kWarps * kDecodeRows * (kHd + 2);
  static_assert(kCombineBytes <= 2 * static_cast<size_t>(kWarps * kWarpHalves), "the sums fit the stages");
};

template <int kHd>
__global__ void __launch_bounds__(kThreads) decode_attention(AttentionCall c) {
  static_assert(kHd % 16 == 0 && kHd <= kMostHeadDim, "a head of whole MMA steps, its sums in registers");
  using S = DecodeShared<kHd>;
  using device_primitives::warp_xor;
  constexpr int kChunks = kHd / 16, kSteps = kHd / 16, kTiles = kHd / 8;
  device_primitives::start_next_kernel();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, lg = lane / 4, lt = lane % 4;  // fragments' (g, t)
  uint16_t* queries = reinterpret_cast<uint16_t*>(device_primitives::block_shared());
  uint16_t* stages = queries + S::kQueryHalves + warp * S::kWarpHalves;  // the warp's own
  const int64_t g = blockIdx.x, b = blockIdx.y, group = c.heads / c.kv_heads;
  const int rows = static_cast<int>(group * c.seq);
  const int64_t past = past_positions(c.seqlens[b], c.seq);
  const int64_t cache_offset = (b * c.kv_heads + g) * c.capacity * kHd;
  const uint16_t* cache_k = static_cast<const uint16_t*>(c.present_key) + cache_offset;
  const uint16_t* cache_v = static_cast<const uint16_t*>(c.present_value) + cache_offset;

  // The kv head's new keys, rotated, and values into the cache (positions below its capacity)
  for (int i = threadIdx.x; i < c.seq * kChunks; i += kThreads) {
    const int64_t s = i / kChunks, position = past + s;
    if (position < c.capacity) append_chunk<kHd>(c, b, g, s, position, i % kChunks);
  }
  // The queries, rotated: row r is query head g * group + r % group at new token r / group
  for (int i = threadIdx.x; i < kDecodeRows * kChunks; i += kThreads) {
    const int r = i % kDecodeRows;
    const int64_t s = r / group;
    store_query_chunk<kHd>(queries, r, i / kDecodeRows, r < rows, c, b, s, g * group + r % group, past + s);
  }
  __syncthreads();  // the queries, and the cache's new keys and values
  uint32_t qf[kSteps][4];
  query_fragments<kHd>(queries, qf);

  const float scale = attention_scale(c.scale, kHd);
  const int64_t position[2] = {past + lg / group, past + (lg + 8) / group};
  const bool real[2] = {lg < rows, lg + 8 < rows};
  const int64_t first = first_key(past, c.window), last_position = past + c.seq - 1;
  const int64_t last = last_position < c.capacity ? last_position : c.capacity - 1;
  const int64_t steps = last >= first ? (last - first) / kDecodeKeys + 1 : 0;
  const int64_t mine = steps > warp ? (steps - warp + kWarps - 1) / kWarps : 0;  // steps warp, warp + kWarps, ...
  float top[2] = {-INFINITY, -INFINITY}, total[2] = {0.f, 0.f};
  float o[kTiles][4];
#pragma unroll
  for (int n = 0; n < kTiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  if (mine > 0) fetch_keys<kHd, kDecodeKeys>(stages, cache_k, cache_v, first + warp * kDecodeKeys, last, lane, 32);
  for (int64_t i = 0; i < mine; ++i) {
    if (i + 1 < mine) {
      fetch_keys<kHd, kDecodeKeys>(stages + (i + 1) % 2 * 2 * S::kTile, cache_k, cache_v,
                                   first + (warp + (i + 1) * kWarps) * kDecodeKeys, last, lane, 32);
    } else {
      device_primitives::commit_async();  // (an empty group: one in flight after this step's, as above)
    }
    device_primitives::wait_async<1>();  // this lane's copies of the step
    device_primitives::warp_sync();      // the warp's
    const uint16_t* keys = stages + i % 2 * 2 * S::kTile;
    attend<kHd, kDecodeKeys / 8>(qf, keys, keys + S::kTile, first + (warp + i * kWarps) * kDecodeKeys, last, position,
                                 real, c, scale, top, total, o);
    device_primitives::warp_sync();  // the warp is done with the stage before its next copies overwrite it
  }
  device_primitives::wait_async<0>();  // (the last, empty group)
  __syncthreads();                     // every warp is done with the stages: they now hold the sums
  float* sums = reinterpret_cast<float*>(queries + S::kQueryHalves);  // [warp][row][kHd]
  float* tops = sums + kWarps * kDecodeRows * kHd;                      // [warp][row]
  float* totals = tops + kWarps * kDecodeRows;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    total[r] += warp_xor(total[r], 1);
    total[r] += warp_xor(total[r], 2);
    const int row = lg + 8 * r;
    if (lt == 0) {
      tops[warp * kDecodeRows + row] = top[r];
      totals[warp * kDecodeRows + row] = total[r];
    }
#pragma unroll
    for (int n = 0; n < kTiles; ++n) {
      sums[(warp * kDecodeRows + row) * kHd + 8 * n + 2 * lt] = o[n][2 * r];
      sums[(warp * kDecodeRows + row) * kHd + 8 * n + 2 * lt + 1] = o[n][2 * r + 1];
    }
  }
  __syncthreads();
  uint16_t* out = static_cast<uint16_t*>(c.out);
  for (int i = threadIdx.x; i < rows * kHd; i += kThreads) {  // each row's warps combined
    const int r = i / kHd, d = i % kHd;
    float best = -INFINITY;
    for (int w = 0; w < kWarps; ++w) best = fmaxf(best, tops[w * kDecodeRows + r]);
    float weight = 0.f, value = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      if (tops[w * kDecodeRows + r] == -INFINITY) continue;  // a warp that had no keys of the row's
      const float f = device_primitives::fast_exp(tops[w * kDecodeRows + r] - best);
      weight += totals[w * kDecodeRows + r] * f;
      value += sums[(w * kDecodeRows + r) * kHd + d] * f;
    }
    const int64_t s = r / group, h = g * group + r % group;
    const float result = weight > 0.f ? value / weight : 0.f;
    out[(b * c.seq + s) * c.heads * kHd + h * kHd + d] = device_primitives::float_half(result);
  }
}

#if defined(__CUDACC__)
// Lets `kernel` take `bytes` of dynamic shared memory where that is more than the default 48 KB: asked
// once a device (`devices`: a bit each, the first 64), so not again while a graph is being captured
// (the runtime's graphs capture after uncaptured warm-up calls).
template <class Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes, std::atomic<uint64_t>& devices) {
  int device = 0;
  if (bytes <= 48 * 1024 || cudaGetDevice(&device) != cudaSuccess) return;
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit != 0 && (devices.load() & bit) != 0) return;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  devices.fetch_or(bit);
}

template <int kHd>
void launch(const AttentionCall& c, cudaStream_t stream) {
  const dim3 tokens(static_cast<unsigned>(c.seq), static_cast<unsigned>(c.batch));
  append_new_tokens<kHd><<<tokens, kThreads, 0, stream>>>(c);
  const dim3 grid(static_cast<unsigned>(c.heads), static_cast<unsigned>((c.seq + kQueries - 1) / kQueries),
                  static_cast<unsigned>(c.batch));
  static std::atomic<uint64_t> devices{0};
  allow_shared_memory(prefill_attention<kHd>, Shared<kHd>::kBytes, devices);
  prefill_attention<kHd><<<grid, kThreads, Shared<kHd>::kBytes, stream>>>(c);
}

// Whether decode_attention takes the call: the group's query heads at every new token fit its rows.
inline bool decode_fits(const AttentionCall& c) { return c.heads / c.kv_heads * c.seq <= kDecodeRows; }

template <int kHd>
void launch_decode(const AttentionCall& c, cudaStream_t stream) {
  static std::atomic<uint64_t> devices{0};
  allow_shared_memory(decode_attention<kHd>, DecodeShared<kHd>::kBytes, devices);
  const dim3 grid(static_cast<unsigned>(c.kv_heads), static_cast<unsigned>(c.batch));
  decode_attention<kHd><<<grid, kThreads, DecodeShared<kHd>::kBytes, stream>>>(c);
}
#endif

}  // namespace attention_mma
