// How gemm_int4_mma.cuh's tensor-core GEMM cuts a call into blocks: its tile configurations, the rows
// a block, whether it takes a shape, and the parts K is split into. Plain C++ (no CUDA): the
// host code's choices, tested on a CPU by tests/test_gemm_int4_plan.py.
#pragma once
#include <stdint.h>

namespace gemm_int4 {

constexpr int kStepK = 64;       // K a step of the block's loop
constexpr int kChunkCodes = 32;  // codes a 16-byte chunk holds

// The tile configurations a launch can ask for (`config`): 128 or 256 outputs a block (8 warps of
// 1 or 2 fragments 16 outputs wide, mma.sync), 128 by Hopper's warpgroup MMA (kWarpgroup: 2
// warpgroups of 64 outputs; sm_90a; x copied into shared memory by 4-byte cp.async; the probe's
// only), the same with x staged through registers (kWarpgroupStaged: 16-byte reads a step ahead,
// then 4-byte shared stores; LinearInt4's tile from 32 rows on an H100 / H200; in the probe at 64
// rows faster than the mma.sync tiles on every 1B linear and the 8B o, gate/up, down and lm_head,
// slower on the 8B q/k/v, run72-73), or 128 by mma.sync in two groups of rows (kRowGroups: 2 x 4 warps
// of 2 fragments, each warp over half of the block's rows; blocks of 8 rows as config 0; the probe's
// only, slower at every shape of run27: each weight dequantized twice, 297 instructions a step
// against 196); 4 (kPairedSteps) is config 0's tile taking two steps of K a pipeline stage (one
// barrier and one round of copies a pair of steps) where K's steps pair up, else config 0.
constexpr int kConfigs = 6;
constexpr int kWarpgroup = 2;
constexpr int kWarpgroupStaged = 5;
constexpr int kRowGroups = 3;
constexpr int kPairedSteps = 4;
inline int block_outputs(int config) { return config == 1 ? 256 : 128; }

// Steps of K a pipeline stage of `config`'s tile holds for K (kPairedSteps: 2 where K's steps are
// even): each part of K then takes a multiple of it.
inline int stage_steps(int config, int64_t k) { return config == kPairedSteps && k / kStepK % 2 == 0 ? 2 : 1; }

// Rows a block: 8, 16, 32 or 64, at most `most` (more rows: more blocks over the grid's second
// dimension).
inline int block_rows(int m, int most = 64) {
  const int rows = m <= 8 ? 8 : m <= 16 ? 16 : m <= 32 ? 32 : 64;
  return rows < most ? rows : most;
}

// Whether the GEMM takes the shape: K in whole steps and whole quantization blocks, the block a
// power of two of whole chunks (a block index is a shift), x and the codes 16-byte aligned.
inline bool takes(int64_t k, int64_t block, const void* x, const void* codes) {
  return k > 0 && k % kStepK == 0 && block >= kChunkCodes && (block & (block - 1)) == 0 && k % block == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(codes) % 16 == 0;
}

// The most blocks of a portable thread block cluster: K's parts add up their sums in the
// cluster's shared memory where the device launches clusters (sm_90) and there are no more.
// LinearInt4 cuts K into at most as many parts where each stores its sums, too: on an H100 (run30,
// gpu_int4_gemm_probe.py --fill 264 --most-parts 16) 16 made nothing faster by more than 0.8 us and
// some much slower: the 1B o at 64 rows 9.8 against 7.7 us (16 parts of 2 steps), the 8B down at 64
// rows 54.4 against 40.9 (9 parts: 288 blocks, more than two an SM hold at once).
constexpr int kClusterParts = 8;

// Steps of K a part takes when K is cut into `splits` parts, a multiple of `unit` (stage_steps').
inline int steps_per_split(int k, int splits, int unit = 1) {
  const int steps = k / kStepK;
  splits = splits < 1 ? 1 : splits > steps ? steps : splits;
  const int per_part = (steps + splits - 1) / splits;
  return (per_part + unit - 1) / unit * unit;
}

// The parts K is cut into when asked for `splits`: whole steps each (a multiple of `unit`), none empty.
inline int parts_of(int k, int splits, int unit = 1) {
  const int per_part = steps_per_split(k, splits, unit);
  return (k / kStepK + per_part - 1) / per_part;
}

// The parts K is cut into so that the grid has about `fill` blocks, at most `most_parts`: none
// empty, each whole steps, 1 where the (m, n) tiles alone reach `fill`.
inline int splits_for(int m, int n, int k, int config, int fill, int most_rows = 64, int most_parts = 1 << 30) {
  const int rows = block_rows(m, most_rows), outputs = block_outputs(config);
  const long tiles = static_cast<long>((m + rows - 1) / rows) * ((n + outputs - 1) / outputs);
  long wanted = (fill + tiles - 1) / tiles;
  wanted = wanted > most_parts ? most_parts : wanted;
  return parts_of(k, static_cast<int>(wanted > k ? k : wanted), stage_steps(config, k));
}

}  // namespace gemm_int4
