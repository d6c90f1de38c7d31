// A tensor-core GEMM with 4-bit weights read straight into the MMA's registers, for the LinearInt4
// family's calls of more rows than its GEMV takes: y (M, N) = x (M, K) . w^T, x float16
// row-major, w in onnxruntime MatMulNBits' layout (cuda_kernels.h's Int4Weights: row n's codes
// contiguous along K, two a byte, the low nibble first), fp32 sums.
//
// Each mma.sync m16n8k16 multiplies 16 outputs' weights (the A operand, dequantized in registers)
// by 8 rows of x (the B operand): the weights fill the MMA's 16-wide side, so a row count of 8 wastes
// nothing. It sums over its 16 k in any order, so each lane's k are chosen to be codes it reads at
// once: lane (g, t) (g = lane / 4, t = lane % 4) holds, for outputs g and g + 8 of a 16-wide
// fragment, the 16 codes [16t, 16t + 16) of a 64-deep step (an 8-byte read each; inside one
// quantization block); MMA m of the step's four takes bytes 2m and 2m + 1, each byte's two codes one
// half2 (the nibbles or'ed into 1024.0's and 64.0's bits, less the same plus the zero point, times the
// scale). x row g's values [16t, 16t + 16) as read (two 16-byte reads) are then MMA m's B registers
// in order (words 2m, 2m + 1): gemm_int4_fragments.h has the mapping, tested on the CPU.
//
// A block: 8 warps side by side along the outputs, each over all of the block's BM = 8 MR rows
// (MR 8-row fragments, so that each weight is dequantized once a block) and NO 16-wide fragments
// of outputs: BN = 128 NO outputs. K in 64-deep steps through a STAGES-deep cp.async pipeline of the
// x tile and the raw codes (shared memory holds 4 bits a weight; a stage holds one step, or SUB = 2
// of them with gemm_int4_plan.h's kPairedSteps, one barrier and one round of copies a pair of steps,
// each part of K then an even count of steps); each weight's scale and zero point
// read a step ahead into registers (the first step's codes and scales before the kernel waits for
// the one before it: a programmatic dependent launch where the caller asks). K may be split over
// gridDim.z, the parts' sums added in one of three ways (SplitSums): on sm_90 the parts of a tile as
// one thread block cluster's blocks, which add up their sums in each other's shared memory and
// write float16 (no other kernel); each part adding into a zeroed fp32 buffer by atomics, converted
// by a second kernel; or each part storing its sums in a buffer of its own (through shared memory,
// 16 bytes a thread a store: store_tile), all added in part order by the kernel that converts them to
// float16 after (no memset; the same sums every call, as in the cluster), or where the caller asks
// (Launch::add_parts false: LinearInt4NormLinearInt4) by a kernel of its own that reads them. With
// SwiGLU a block's tile is half gate rows and half their up rows, and its epilogue writes
// silu(gate) * up (through shared memory; K then split only within a cluster).
//
// The kWarpgroup tile (WG; sm_90a: H100 / H200) runs the same block by Hopper's warpgroup MMA
// instead: each of its two warpgroups multiplies its 64 outputs' weights, dequantized into
// registers exactly as above (a lane's 16 codes of a step, the same byte selects), by the x tile
// straight from shared memory, 4 MMAs a step for the whole warpgroup instead of 32 mma.sync and 16
// shared reads of x a warp. The MMA reads x in 8-k chunks, so x is stored in the k order the A
// registers hold (gemm_int4_fragments.h's wg_x_k): 4 bytes at a time by cp.async (config 2, the
// probe's only), or (XREG, kWarpgroupStaged: LinearInt4's tile from 32 rows on an H100 / H200) read
// 32 bytes a thread a step ahead into registers, then stored 4 bytes at a time and fenced for the
// MMA. On an H100 at 64 rows, against config 0 (mma.sync): config 2 (run71) q/k/v 10.9 against 11.3
// us, o 7.3 against 7.8, down 15.6 against 17.9, but gate/up 36.0 against 31.3 and the lm_head 174
// against 165 (run21-22's tile, k in order with a byte select a lane, two scales a row a step: the
// lm_head 234); the staged tile (run72) q/k/v 9.8 against 11.0, o 6.8 against 7.6, gate/up 29.3
// against 30.1, down 14.1 against 17.2, the lm_head 137 against 170.
// gemm_int4_plan.h has the host's choices (tiles, rows a block, splits).
//
// Included by linear_int4.cu and by benchmarks/cuda/gemm_int4_probe.cu (device code, nvcc). Without
// nvcc the kernel compiles as C++ against a CPU emulation of the few CUDA pieces it uses
// (device_primitives.cuh's: threads, barriers, shared memory, cp.async, mma.sync, clusters;
// tests/cuda_emulation.h, included first), which runs it on the CPU
// (tests/test_gemm_int4_emulated.py); the launch is nvcc's only.
#pragma once
#if defined(__CUDACC__)
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif
#include <stdint.h>

#include "device_primitives.cuh"
#include "gemm_int4_fragments.h"
#include "gemm_int4_plan.h"
#include "op_math.h"

namespace gemm_int4_mma {

using namespace device_primitives;
using gemm_int4::kStepK;
constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kLdX = kStepK + 8;    // the x tile's row stride in halves (conflict-free 16-byte reads)
constexpr int kStepBytes = kStepK / 2;  // a row's codes a step

// How K's parts add up their sums (where K is split): in a thread block cluster where one fits
// (sm_90; else by atomics), by atomics into a zeroed buffer (converted after), or each part into a
// buffer of its own (added after). `sums` must hold m * n floats for atomics, parts * m * n for
// kInParts.
enum class SplitSums { kInCluster, kByAtomics, kInParts };

struct Args {
  const __half* x;
  const uint8_t* codes;
  const __half* scales;
  const uint8_t* zeros;  // null: 8
  __half* y;             // (m, n), or (m, n / 2) with swiglu
  float* sums;           // with K in parts over the grid and no cluster: (m, n) zeroed, or (parts, m, n)
  int m;
  int n;  // rows of codes
  int k;
  int block;  // K values a scale covers, a multiple of 32
  int steps_per_split;
  SplitSums adding;  // K's parts (gridDim.z > 1), as launched: kInCluster only where launched as clusters
  int swiglu;   // 1: codes rows [0, n/2) are gates, [n/2, n) ups; y = silu(gate) * up
  int direct_stores;  // 1: each thread stores its own sums (or float16) one by one, not through store_tile
};

// The rows of codes tile `index` of `bn` rows holds: output columns [first, first + columns), or
// with SwiGLU the gates of those columns and then their ups (`outputs` rows on); -1 past the last.
struct TileRows {
  int outputs;  // columns of y: the rows of codes, or half of them with SwiGLU
  int columns;  // a tile's: bn, or bn / 2 with SwiGLU
  int first;

  __host__ __device__ static TileRows of(const Args& a, int bn, int index) {
    const int columns = a.swiglu ? bn / 2 : bn;
    return {a.swiglu ? a.n / 2 : a.n, columns, index * columns};
  }
  __device__ __forceinline__ int operator()(int c) const {
    const int column = first + c % columns;
    if (column >= outputs) return -1;
    return c >= columns ? column + outputs : column;
  }
};

// A block's tile: MR 8-row fragments by NO 16-output fragments a warp, the warps in WR groups of
// rows (kRowGroups: 2, each warp over half of the block's rows and twice the outputs, so that a
// warp reads half as much of x from shared memory an MMA, and each weight is dequantized twice a
// block); WG: by the warpgroup MMA (NO 1), x stored as its B operand (k in 16-byte chunks: chunk c
// of each row, then chunk c + 1: the MMA's core matrices) instead of row by row. A pipeline stage
// holds SUB steps of K (gemm_int4::kPairedSteps: 2), one after the other, each laid out as a stage
// of one step.
template <int MR, int NO, int STAGES, bool WG = false, int WR = 1, int SUB = 1>
struct Tile {
  static_assert(!WG || (NO == 1 && WR == 1), "the warpgroup MMA's tile is 128 outputs, one group of rows");
  static_assert(!WG || SUB == 1, "the warpgroup MMA's stage is one step");
  static_assert(kWarps % WR == 0, "the warps split evenly into groups of rows");
  static constexpr int kWarpsWide = kWarps / WR;  // warps side by side along the outputs
  static constexpr int kWarpRows = 8 * MR;         // rows a warp multiplies
  static constexpr int kBM = kWarpRows * WR;
  static constexpr int kBN = 16 * kWarpsWide * NO;
  static constexpr int kChunkX = kBM * 16;           // bytes: the x tile's 8 k of every row (WG)
  static constexpr int kStepX = WG ? kBM * kStepK * 2 : kBM * kLdX * 2;  // bytes: a step's x
  static constexpr int kStepW = kBN * kStepBytes;                        // bytes: a step's codes
  static constexpr int kStageX = SUB * kStepX;
  static constexpr int kStageW = SUB * kStepW;
  static constexpr size_t kPipeline = static_cast<size_t>(STAGES) * (kStageX + kStageW);
  static constexpr int kLdSums = kBN + 4;  // store_tile's row stride in floats
  static constexpr size_t kSums = static_cast<size_t>(kBM) * kLdSums * 4;  // the fp32 sums (tile_sums_*, store_tile)
  static constexpr size_t kShared = kPipeline > kSums ? kPipeline : kSums;
};

// A thread's 16-byte pieces of one matrix's tile of TOTAL pieces a stage, STEP bytes along each row
// from one step to the next: where each comes from at the next step, its byte offset in the stage
// (-1: the thread has no such piece; never where every thread has kN), and whether it lies inside
// the matrix (outside: zero-filled).
template <int TOTAL, int STEP>
struct Pieces {
  static constexpr int kN = (TOTAL + kThreads - 1) / kThreads;
  static constexpr bool kEveryThread = TOTAL % kThreads == 0;
  const unsigned char* from[kN];
  int to[kN];
  bool valid[kN];

  // The next step's pieces into the stage at `stage` where `load`, then on to the step after.
  __device__ __forceinline__ void copy_next(unsigned char* stage, bool load) {
#pragma unroll
    for (int p = 0; p < kN; ++p) {
      if (load && (kEveryThread || to[p] >= 0)) copy_async(stage + to[p], from[p], valid[p]);
      from[p] += STEP;
    }
  }
};

// The pieces of a tile of `per_row` pieces a row, its row r the matrix's row_of(r) (-1: none,
// zero-filled), rows `row_bytes` apart from `base`; `first_bytes` into each row; in the stage rows
// `shared_row_bytes` apart, a row's pieces 16 bytes apart. Thread t takes pieces t, t + kThreads, ...:
// piece i is row i / per_row's.
template <int TOTAL, int STEP, class RowOf>
__device__ __forceinline__ void plan_pieces(const unsigned char* base, size_t row_bytes, RowOf row_of, int per_row,
                                            int shared_row_bytes, size_t first_bytes, Pieces<TOTAL, STEP>& pieces) {
#pragma unroll
  for (int p = 0; p < Pieces<TOTAL, STEP>::kN; ++p) {
    const int piece = threadIdx.x + p * kThreads;
    const int r = piece / per_row, c = piece % per_row;
    const bool mine = piece < TOTAL;
    const int row = mine ? row_of(r) : -1;
    pieces.valid[p] = row >= 0;
    pieces.from[p] = base + static_cast<size_t>(row >= 0 ? row : 0) * row_bytes + first_bytes + 16 * c;
    pieces.to[p] = mine ? r * shared_row_bytes + 16 * c : -1;
  }
}

// gemm_int4::kCodeMagic in a register the compiler cannot see into (blockDim.x < 2^20: or'ing in
// its high bits changes nothing).
__device__ __forceinline__ uint32_t code_magic() { return gemm_int4::kCodeMagic | (blockDim.x >> 20); }

// Byte `byte` of `word`'s two codes as (code - zero) * scale, one half2 (`offset`: the zero's bits
// from zero_pair_bits; `magic`: code_magic()).
__device__ __forceinline__ uint32_t weight_pair(uint32_t word, int byte, uint32_t magic, __half2 offset,
                                                __half2 scale) {
  const uint32_t bits = gemm_int4::code_pair_bits(word, byte, magic);
  const __half2 w = __hmul2(__hsub2(*reinterpret_cast<const __half2*>(&bits), offset), scale);
  return *reinterpret_cast<const uint32_t*>(&w);
}

// What dequantizes a row's codes at one step: the scale in both halves, and zero_pair_bits.
struct Dequant {
  __half2 scale;
  __half2 offset;
};

// Where a thread finds its outputs' scales and zero points: row (first output) and the strides,
// hoisted out of the loop (a block index is a shift: the block is a power of two). The loads in
// the loop take no branch: a group past the last output reads the last one's row (its sums are
// never stored), and without zero points the byte read is a scale's, its zero point 8 where used.
struct DequantRows {
  const __half* scales;   // the first output's row of scales (a row inside n)
  const uint8_t* zeros;   // its row of packed zero points, or its scales' bytes
  int scale_stride;       // 8 outputs on: scales
  int zero_stride;        // and bytes of `zeros`
  int zero_shift;         // 1 with zero points (a byte a pair of blocks), else 31 (byte 0)
  int shift;              // log2(block)
  int last;               // the thread's last group inside n (0 when none is)
  bool has_zeros;
};

// A row's scale and packed zero-point byte for one step, as loaded; converted where used, a step
// later. The loads (load_u16, load_u8) are volatile asm so that they stay where they are issued
// (left to itself the compiler sinks them next to their use, and every step waits on memory), and
// nothing reads what they load before dequant_of: on an H100 (run17's Nsight Compute profile) a
// select of the zero-point byte right after its load made every step wait on it, the profile's
// most stalled instruction.
struct RawDequant {
  uint16_t scale;  // float16 bits
  uint16_t zeros;  // the byte holding the block's zero point (any byte without zero points)
};

__device__ __forceinline__ RawDequant load_dequant(const DequantRows& d, int j, int b) {
  const int row = min(j, d.last);
  return {load_u16(d.scales + row * d.scale_stride + b), load_u8(d.zeros + row * d.zero_stride + (b >> d.zero_shift))};
}

// Block b's scale and zero point as dequantizing needs them (8 without zero points).
__device__ __forceinline__ Dequant dequant_of(const RawDequant& r, int b, bool has_zeros) {
  const uint32_t zero = has_zeros ? (b % 2 == 0 ? r.zeros : r.zeros >> 4) & 0xF : 8u;
  const uint32_t offset = gemm_int4::zero_pair_bits(zero);
  return {__half2half2(__ushort_as_half(r.scale)), *reinterpret_cast<const __half2*>(&offset)};
}

// f(row, column, sum) for each of the thread's sums, row and column within the block's tile (the
// warp's rows from `first_row` on).
template <int NO, int MR, class F>
__device__ __forceinline__ void for_each_sum(const float (&acc)[NO][MR][4], int first_row, int out_row, int t, F f) {
#pragma unroll
  for (int o = 0; o < NO; ++o)
#pragma unroll
    for (int r = 0; r < MR; ++r)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        f(first_row + 8 * r + 2 * t + gemm_int4::d_row(e), out_row + 16 * o + gemm_int4::d_output(e), acc[o][r][e]);
      }
}

// The block's sums into its shared memory (`sums`, rows `stride` floats apart) once every warp is
// done with the pipeline's stages, then a barrier over the block, or over its cluster where `cluster`.
template <int NO, int MR>
__device__ __forceinline__ void sums_to_shared(const float (&acc)[NO][MR][4], float* sums, int stride, bool cluster,
                                               int first_row, int out_row, int t) {
  __syncthreads();
  for_each_sum(acc, first_row, out_row, t, [&](int row, int col, float sum) { sums[row * stride + col] = sum; });
  if (cluster) cluster_sync();
  else __syncthreads();
}

// tile_sums_by_quads (below) once the block's sums are in its shared memory (`sums`, rows kLdSums
// floats apart) and the barrier is passed: a function of its own (not inlined).
template <class T>
__device__ __noinline__ void tile_out(const Args& a, const float* sums, int outputs, int first_column, int m0,
                                      bool cluster) {
  const int parts = cluster ? static_cast<int>(gridDim.z) : 1;
  // every part's four values read before any is added (the reads then wait on the cluster once, not
  // once a part), added in rank order (the same sum, whatever the count of parts)
  auto total = [&](int at) {
    if (!cluster) return *reinterpret_cast<const float4*>(sums + at);
    float4 part_sums[gemm_int4::kClusterParts];
#pragma unroll
    for (int part = 0; part < gemm_int4::kClusterParts; ++part) {
      if (part < parts) part_sums[part] = cluster_load4(sums + at, part);
    }
    float4 sum = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int part = 0; part < gemm_int4::kClusterParts; ++part) {
      if (part < parts) {
        sum.x += part_sums[part].x, sum.y += part_sums[part].y, sum.z += part_sums[part].z, sum.w += part_sums[part].w;
      }
    }
    return sum;
  };
  constexpr int kQuads = T::kBN / 8;  // a row's groups of four outputs: the tile's gates (or ups) / 4
  const bool vectors = outputs % 4 == 0 && reinterpret_cast<uintptr_t>(a.y) % 8 == 0;
  const int first = (cluster ? cluster_rank() : 0) * kThreads + static_cast<int>(threadIdx.x);
  for (int i = first; i < T::kBM * kQuads; i += parts * kThreads) {
    const int r = i / kQuads, c = 4 * (i % kQuads), row = m0 + r, col = first_column + c;
    if (row >= a.m || col >= outputs) continue;
    const int at = r * T::kLdSums + c;
    const float4 g = total(at), u = total(at + T::kBN / 2);
    const float gate[4] = {g.x, g.y, g.z, g.w}, up[4] = {u.x, u.y, u.z, u.w};
    float v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = swiglu_value(gate[j], up[j]);
    __half* out = a.y + static_cast<size_t>(row) * outputs + col;
    if (vectors && col + 4 <= outputs) {
      alignas(8) __half h[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) h[j] = __float2half(v[j]);
      *reinterpret_cast<uint2*>(out) = *reinterpret_cast<const uint2*>(h);
    } else {
      for (int j = 0; j < 4 && col + j < outputs; ++j) out[j] = __float2half(v[j]);
    }
  }
  if (cluster) cluster_sync_after_reads();
}

// A SwiGLU call's outputs through shared memory: each part (a cluster's block, rank = part; or the
// block alone) leaves its (BM, BN) sums there (rows kLdSums floats apart, as store_tile's); after a
// barrier each adds up its share of the tile over the parts four columns at a time (16-byte reads,
// from the other blocks' shared memory through the cluster), in rank order (the same sums every
// call), applies SwiGLU to a gate and its up (tile columns c and c + BN / 2), and writes float16 (8
// bytes at a time where y is aligned for that); in a cluster a second barrier keeps each block's
// shared memory until the others have read it. The share's index arithmetic is shifts and masks (the
// tile's sizes are powers of two). The ending of the kernel that runs the SwiGLU calls, and only
// them (gemm_int4_mma_kernel's QUADS). On an
// H100 (Nsight Compute, the 1B gate/up at 64 rows in clusters of two) tile_sums_by_value's reads, a
// float a part at a time with divisions by the tile's width, took ~43% of the kernel's warp stall
// samples; with this ending the gate/up took 26.4 us against 29.9 (run35).
template <class T, int NO, int MR>
__device__ __forceinline__ void tile_sums_by_quads(const Args& a, const float (&acc)[NO][MR][4],
                                                   unsigned char* shared, const TileRows& tile, int m0,
                                                   int first_row, int out_row, int t) {
  static_assert((T::kBN & (T::kBN - 1)) == 0 && T::kBN >= 8, "the tile's width is a power of two");
  float* sums = reinterpret_cast<float*>(shared);
  const bool cluster = a.adding == SplitSums::kInCluster && gridDim.z > 1;
  sums_to_shared(acc, sums, T::kLdSums, cluster, first_row, out_row, t);
  tile_out<T>(a, sums, tile.outputs, tile.first, m0, cluster);
}

// tile_sums_by_quads' work one value at a time (each part's float read through the cluster, the
// share's row and column by division): the ending of the kernel without SwiGLU (QUADS false) where
// K's parts add up in a cluster (the probe's c10000 forms of those linears).
template <class T, int NO, int MR>
__device__ __forceinline__ void tile_sums_by_value(const Args& a, const float (&acc)[NO][MR][4],
                                                   unsigned char* shared, const TileRows& tile, int m0,
                                                   int first_row, int out_row, int t) {
  float* sums = reinterpret_cast<float*>(shared);
  const bool cluster = a.adding == SplitSums::kInCluster && gridDim.z > 1;
  sums_to_shared(acc, sums, T::kBN, cluster, first_row, out_row, t);
  const int parts = cluster ? static_cast<int>(gridDim.z) : 1;
  const int width = tile.columns, outputs = tile.outputs;
  // every part's value read before any is added (the reads then wait on the cluster once, not once
  // a part), added in rank order (the parts past the last add 0: the same sum)
  auto total = [&](int at) {
    if (!cluster) return sums[at];
    float part_sums[gemm_int4::kClusterParts];
#pragma unroll
    for (int part = 0; part < gemm_int4::kClusterParts; ++part) {
      part_sums[part] = part < parts ? cluster_load(sums + at, part) : 0.f;
    }
    float sum = 0.f;
#pragma unroll
    for (int part = 0; part < gemm_int4::kClusterParts; ++part) sum += part_sums[part];
    return sum;
  };
  const int first = (cluster ? cluster_rank() : 0) * kThreads + static_cast<int>(threadIdx.x);
  for (int i = first; i < T::kBM * width; i += parts * kThreads) {
    const int row = m0 + i / width, c = i % width, col = tile.first + c;
    if (row >= a.m || col >= outputs) continue;
    const int at = (i / width) * T::kBN + c;
    const float value = a.swiglu ? swiglu_value(total(at), total(at + T::kBN / 2)) : total(at);
    a.y[static_cast<size_t>(row) * outputs + col] = __float2half(value);
  }
  if (cluster) cluster_sync_after_reads();
}

// The block's sums (K's part blockIdx.z's into its buffer where K is split, else y in float16) through
// shared memory (rows kLdSums floats apart: the fragments' writes fall in distinct banks), then out
// four consecutive values a thread at a time (16 bytes of sums, 8 of float16: a warp writes a row's
// 128 outputs at once, not 32 scattered values a thread), value by value where y or the sums are not
// aligned for that, or at the last columns of n.
template <class T, int NO, int MR>
__device__ __forceinline__ void store_tile(const Args& a, const float (&acc)[NO][MR][4], unsigned char* shared,
                                           const TileRows& tile, int m0, int first_row, int out_row, int t) {
  float* sums = reinterpret_cast<float*>(shared);
  sums_to_shared(acc, sums, T::kLdSums, false, first_row, out_row, t);
  const bool parts = gridDim.z > 1;
  float* part = parts ? a.sums + blockIdx.z * static_cast<size_t>(a.m) * a.n : nullptr;
  const bool vectors = a.n % 4 == 0 && (parts ? reinterpret_cast<uintptr_t>(part) % 16 == 0
                                              : reinterpret_cast<uintptr_t>(a.y) % 8 == 0);
  constexpr int kQuads = T::kBN / 4;  // a row's groups of four
  for (int i = threadIdx.x; i < T::kBM * kQuads; i += kThreads) {
    const int r = i / kQuads, c = 4 * (i % kQuads), row = m0 + r, col = tile.first + c;
    if (row >= a.m || col >= tile.outputs) continue;
    const float* from = sums + r * T::kLdSums + c;
    const size_t at = static_cast<size_t>(row) * a.n + col;
    if (vectors && col + 4 <= tile.outputs) {
      if (parts) {
        *reinterpret_cast<uint4*>(part + at) = *reinterpret_cast<const uint4*>(from);
      } else {
        alignas(8) __half h[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) h[j] = __float2half(from[j]);
        *reinterpret_cast<uint2*>(a.y + at) = *reinterpret_cast<const uint2*>(h);
      }
      continue;
    }
    for (int j = 0; j < 4 && col + j < tile.outputs; ++j) {
      if (parts) part[at + j] = from[j];
      else a.y[at + j] = __float2half(from[j]);
    }
  }
}

// Blocks an SM should hold at once: two where a warp's tile is at most 64 rows by 16 outputs or 32
// by 32 (registers capped at 128 a thread, which they fit without spilling), else one.
template <int MR, int NO>
constexpr int kBlocksPerSm = MR * NO <= 8 ? 2 : 1;

// One step of K (64) by mma.sync: the warp's codes (outputs g and g + 8 of each of its NO
// fragments, 16 k a lane: gemm_int4_fragments.h) dequantized once, each into MR MMAs with the
// rows of x it reads from the stage (`xt`, row-major) as B.
template <int MR, int NO>
__device__ __forceinline__ void sync_step(float (&acc)[NO][MR][4], const __half* xt, const unsigned char* wt,
                                          int out_row, int g, int t, uint32_t magic, const Dequant (&cur)[2 * NO][1]) {
  uint2 codes[2 * NO];
#pragma unroll
  for (int j = 0; j < 2 * NO; ++j) {
    const unsigned char* row = wt + (out_row + 8 * j) * kStepBytes;
    codes[j] = *reinterpret_cast<const uint2*>(row + gemm_int4::lane_first_k(t) / 2);
  }
#pragma unroll
  for (int w = 0; w < 2; ++w) {  // codes word w of each group: MMAs 2w and 2w + 1
    uint32_t xw[MR][4];           // row g of each fragment: x words [4w, 4w + 4) of the lane's 8
#pragma unroll
    for (int r = 0; r < MR; ++r) {
      *reinterpret_cast<uint4*>(xw[r]) =
          *reinterpret_cast<const uint4*>(xt + (8 * r + g) * kLdX + gemm_int4::lane_first_k(t) + 8 * w);
    }
#pragma unroll
    for (int m = 2 * w; m < 2 * w + 2; ++m) {
      using gemm_int4::x_word;
#pragma unroll
      for (int o = 0; o < NO; ++o) {  // groups 2o (outputs g) and 2o + 1 (g + 8)
        uint32_t af[4];
#pragma unroll
        for (int reg = 0; reg < 4; ++reg) {
          const int j = 2 * o + gemm_int4::a_output(reg) / 8;
          const uint32_t word = w == 0 ? codes[j].x : codes[j].y;  // bytes [4w, 4w + 4) of the 8
          af[reg] = weight_pair(word, gemm_int4::a_byte(m, reg) - 4 * w, magic, cur[j][0].offset, cur[j][0].scale);
        }
#pragma unroll
        for (int r = 0; r < MR; ++r) mma(acc[o][r], af, xw[r][x_word(m, 0) - 4 * w], xw[r][x_word(m, 1) - 4 * w]);
      }
    }
  }
}

// One step of K (64) by the warpgroup MMA: the warp's codes (outputs g and g + 8 of its 16, 16 k a
// lane, as sync_step reads them) dequantized into the A registers of the step's four MMAs, each
// MMA then over the stage's x (`xt`: chunks of 8 k, T::kChunkX bytes apart, each the tile's rows 16
// bytes apart, k as gemm_int4::wg_x_k says) as B. Issued, not waited for (mma_wait).
template <class T, int MR>
__device__ __forceinline__ void warpgroup_step(float (&acc)[1][MR][4], const unsigned char* xt,
                                               const unsigned char* wt, int out_row, int t, uint32_t magic,
                                               const Dequant (&cur)[2][1]) {
  uint2 codes[2];
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const unsigned char* row = wt + (out_row + 8 * j) * kStepBytes;
    codes[j] = *reinterpret_cast<const uint2*>(row + gemm_int4::lane_first_k(t) / 2);
  }
  uint32_t af[4][4];
#pragma unroll
  for (int m = 0; m < 4; ++m)
#pragma unroll
    for (int reg = 0; reg < 4; ++reg) {
      const int j = gemm_int4::a_output(reg) / 8, w = m / 2;
      const uint32_t word = w == 0 ? codes[j].x : codes[j].y;  // bytes [4w, 4w + 4) of the 8
      af[m][reg] = weight_pair(word, gemm_int4::a_byte(m, reg) - 4 * w, magic, cur[j][0].offset, cur[j][0].scale);
    }
  mma_fence();
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    mma_warpgroup<MR>(&acc[0][0][0], af[m], shared_matrix(xt + 2 * m * T::kChunkX, T::kChunkX, 128));
  }
  mma_commit();
}

// A thread's copies of the warpgroup MMA's x tile a step: row `row`'s 32 bytes from 32 t on (t: the
// thread's index % 4: k [16t, 16t + 16)), 4 bytes into each of the 8 chunks, at word t of the row's
// 16 bytes (gemm_int4::wg_x_k); none where the thread is past the tile's rows (`to` -1).
struct XChunks {
  const unsigned char* from;
  int to;
  bool valid;

  template <int CHUNK_BYTES>
  __device__ __forceinline__ void copy_next(unsigned char* stage, bool load) {
    if (load && to >= 0) {
#pragma unroll
      for (int q = 0; q < 8; ++q) copy_async4(stage + to + q * CHUNK_BYTES, from + 4 * q, valid);
    }
    from += 2 * kStepK;
  }
};

// The kernel: tile (8 MR WR rows, 128 NO / WR outputs) of y, or of K's part blockIdx.z; WG: by the
// warpgroup MMA (sm_90a; NO 1), else by mma.sync. QUADS: the kernel of the calls with SwiGLU, which
// end in tile_sums_by_quads; the others' kernel ends in store_tile (or each thread's stores), or in
// tile_sums_by_value where K's parts add up in a cluster. Two kernels, not one with both endings: nvcc
// schedules the main loop around whichever ending it is given, and with tile_sums_by_quads in place
// of tile_sums_by_value the one kernel's loop took q/k/v, o, down and the lm_head 3-11% longer on an
// H100 (run35, 16-128 rows); this way each kernel's code is one that was measured (by cuobjdump,
// the other kernel's SASS is run34's build's and the SwiGLU kernel's, up to its call of tile_out,
// run35's; tile_out has since dropped the branches for calls without SwiGLU, which it never gets).
template <int MR, int NO, int STAGES, bool WG = false, int WR = 1, bool QUADS = false, int SUB = 1, bool XREG = false>
__global__ void __launch_bounds__(kThreads, (kBlocksPerSm<MR, NO>)) gemm_int4_mma_kernel(Args a) {
  using T = Tile<MR, NO, STAGES, WG, WR, SUB>;
  constexpr bool XR = WG && XREG;  // x staged through registers: read a step before it is stored
  constexpr int NF = 2 * NO;  // 8-output groups a thread dequantizes: outputs g and g + 8 of each fragment
  constexpr int H = 1;  // scales a group a step (a lane's codes of a step lie in one quantization block)
  // stages loaded ahead of the step computed: all but the one being computed, or with the warpgroup
  // MMA, whose step i - 1 may still read its stage during step i, all but those two
  constexpr int LEAD = WG ? STAGES - 2 : STAGES - 1;
  unsigned char* shared = block_shared();
  unsigned char* xs = shared;                        // STAGES x the x tile (T::kStageX bytes)
  unsigned char* ws = shared + STAGES * T::kStageX;  // STAGES x (BN, kStepBytes) codes
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int m0 = blockIdx.y * T::kBM;
  const TileRows tile = TileRows::of(a, T::kBN, static_cast<int>(blockIdx.x));
  const int first = blockIdx.z * a.steps_per_split;  // steps_per_split: a multiple of SUB
  const int count = (min(a.k / kStepK, first + a.steps_per_split) - first) / SUB;  // stages of steps

  // the thread's pieces of the x tile and of the codes tile, a set for each step of a stage, then
  // stage `i` of this part (its steps SUB i on) into `stage` (i = 0, 1, 2, ... in turn; a commit
  // group either way, so that the waits count stages)
  Pieces<T::kBM * 8, kStepK * 2 * SUB> x_pieces[SUB];
  Pieces<T::kBN * 2, kStepBytes * SUB> w_pieces[SUB];
  XChunks x_chunks{};  // WG's
#pragma unroll
  for (int s = 0; s < SUB; ++s) {
    if constexpr (!WG) {
      plan_pieces(reinterpret_cast<const unsigned char*>(a.x), 2L * a.k,
                  [&](int r) { return m0 + r < a.m ? m0 + r : -1; }, 8, kLdX * 2, 2L * (first + s) * kStepK,
                  x_pieces[s]);
    }
    plan_pieces(a.codes, a.k / 2, tile, 2, kStepBytes, static_cast<size_t>(first + s) * kStepBytes, w_pieces[s]);
  }
  if constexpr (WG) {
    const int r = static_cast<int>(threadIdx.x) / 4, row = m0 + r, quarter = static_cast<int>(threadIdx.x) % 4;
    x_chunks.valid = row < a.m;
    x_chunks.to = r < T::kBM ? 16 * r + 4 * quarter : -1;
    x_chunks.from = reinterpret_cast<const unsigned char*>(a.x) + static_cast<size_t>(x_chunks.valid ? row : 0) * 2 * a.k +
                    2L * first * kStepK + 32 * quarter;
  }
  // XR: the thread's 32 bytes of x (x_chunks' row and quarter) of step i, loaded into `xr` (zeros past
  // m or the part's steps), then stored into a stage's chunks (4 bytes each, word `quarter` of the
  // row's 16 bytes) and fenced for the warpgroup MMA's reads after the next barrier
  uint4 xr[2];
  auto x_read = [&](int i) {
    xr[0] = xr[1] = uint4{0, 0, 0, 0};
    if (x_chunks.to >= 0 && x_chunks.valid && i < count) {
      const unsigned char* from = x_chunks.from + 2L * i * kStepK;
      xr[0] = load_u128(from);
      xr[1] = load_u128(from + 16);
    }
  };
  auto x_store = [&](int stage) {
    if (x_chunks.to >= 0) {
      unsigned char* at = xs + stage * T::kStageX + x_chunks.to;
      const uint32_t words[8] = {xr[0].x, xr[0].y, xr[0].z, xr[0].w, xr[1].x, xr[1].y, xr[1].z, xr[1].w};
#pragma unroll
      for (int q = 0; q < 8; ++q) *reinterpret_cast<uint32_t*>(at + q * T::kChunkX) = words[q];
    }
    fence_async_shared();
  };
  auto load_x = [&](int stage, bool load) {
    if constexpr (XR) {
      // stored by x_store instead
    } else if constexpr (WG) {
      x_chunks.copy_next<T::kChunkX>(xs + stage * T::kStageX, load);
    } else {
#pragma unroll
      for (int s = 0; s < SUB; ++s) x_pieces[s].copy_next(xs + stage * T::kStageX + s * T::kStepX, load);
    }
  };
  auto load_w = [&](int stage, bool load) {
#pragma unroll
    for (int s = 0; s < SUB; ++s) w_pieces[s].copy_next(ws + stage * T::kStageW + s * T::kStepW, load);
  };
  auto load_stage = [&](int i, int stage) {
    load_x(stage, i < count);
    load_w(stage, i < count);
    commit_async();
  };

  // the thread's output in group j (j = 2o + h: fragment o's output g + 8h): + 8 j; the warp's rows
  const int out_row = warp % T::kWarpsWide * (T::kBN / T::kWarpsWide) + g;
  const int first_row = warp / T::kWarpsWide * T::kWarpRows;
  DequantRows rows;
  {
    // the groups' rows are 8 apart (a warp's lie in one half of a SwiGLU tile); one past n reads row 0
    const int blocks = a.k / a.block, row = max(tile(out_row), 0);
    rows.scales = a.scales + static_cast<size_t>(row) * blocks;
    rows.scale_stride = 8 * blocks;
    rows.has_zeros = a.zeros != nullptr;
    rows.zeros = rows.has_zeros ? a.zeros + static_cast<size_t>(row) * ((blocks + 1) / 2)
                                : reinterpret_cast<const uint8_t*>(rows.scales);
    rows.zero_stride = rows.has_zeros ? 8 * ((blocks + 1) / 2) : 2 * rows.scale_stride;
    rows.zero_shift = rows.has_zeros ? 1 : 31;
    rows.shift = __ffs(a.block) - 1;
    rows.last = 0;
#pragma unroll
    for (int j = 1; j < NF; ++j) rows.last = tile(out_row + 8 * j) >= 0 ? j : rows.last;
  }
  RawDequant next[SUB][NF][H];  // stage i + 1's steps', loaded during stage i
  // the block of step `step`'s k that group h of the lane's holds
  auto block_of = [&](int step, int h) {
    return ((first + step) * kStepK + gemm_int4::lane_first_k(t)) >> rows.shift;
  };
  auto load_next = [&](int i) {
#pragma unroll
    for (int s = 0; s < SUB; ++s)
#pragma unroll
      for (int j = 0; j < NF; ++j)
#pragma unroll
        for (int h = 0; h < H; ++h) next[s][j][h] = load_dequant(rows, j, block_of(SUB * i + s, h));
  };

  const uint32_t magic = code_magic();
  float acc[NO][MR][4];  // (outputs g, g + 8 of fragment o) x (rows 2t, 2t + 1 of fragment r)
#pragma unroll
  for (int o = 0; o < NO; ++o)
#pragma unroll
    for (int r = 0; r < MR; ++r)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[o][r][e] = 0.f;

  // The first stages' codes and the first step's scales are constants: read before the kernels
  // before this one are done (where launched as their programmatic dependent), x after. The first
  // commit group holds all those codes and x's first stage.
#pragma unroll
  for (int s = 0; s < LEAD; ++s) load_w(s, s < count);
  if (count > 0) load_next(0);
  wait_for_earlier_kernels();
  start_next_kernel();
#pragma unroll
  for (int s = 0; s < LEAD; ++s) {
    if constexpr (XR) {
      x_read(s);
      x_store(s);
    }
    load_x(s, s < count);
    commit_async();
  }
  if constexpr (XR) x_read(LEAD);

  // with the warpgroup MMA two steps a turn, so that each dequantizes into registers of its own while
  // the other's MMAs may still read theirs (ptxas waits for the MMAs before reusing them)
#pragma unroll(WG ? 2 : 1)
  for (int i = 0; i < count; ++i) {
    wait_async<LEAD - 1>();
    // with the warpgroup MMA, step i - 2's MMAs are done with their stage (step i - 1's may run on);
    // the MMAs read what cp.async wrote after its wait and the barrier, no proxy fence between (as
    // CUTLASS's cp.async GMMA main loops do: the fence's MEMBAR would wait for the copies in flight)
    if constexpr (WG) mma_wait<1>();
    __syncthreads();  // stage i is in; every warp is done with the stage loaded next
    load_stage(i + LEAD, (i + LEAD) % STAGES);
    if constexpr (XR) {  // step i + LEAD's x, read during step i - 1; then step i + LEAD + 1's
      x_store((i + LEAD) % STAGES);
      x_read(i + LEAD + 1);
    }
    Dequant cur[SUB][NF][H];
#pragma unroll
    for (int s = 0; s < SUB; ++s)
#pragma unroll
      for (int j = 0; j < NF; ++j)
#pragma unroll
        for (int h = 0; h < H; ++h) cur[s][j][h] = dequant_of(next[s][j][h], block_of(SUB * i + s, h), rows.has_zeros);
    if (i + 1 < count) load_next(i + 1);

    const int stage = i % STAGES;
    if constexpr (WG) {
      warpgroup_step<T>(acc, xs + stage * T::kStageX, ws + stage * T::kStageW, out_row, t, magic, cur[0]);
    } else {
#pragma unroll
      for (int s = 0; s < SUB; ++s) {
        const unsigned char* xt = xs + stage * T::kStageX + s * T::kStepX;
        sync_step<MR, NO>(acc, reinterpret_cast<const __half*>(xt) + first_row * kLdX,
                          ws + stage * T::kStageW + s * T::kStepW, out_row, g, t, magic, cur[s]);
      }
    }
  }
  if constexpr (WG) {
    mma_wait<0>();
#pragma unroll
    for (int r = 0; r < MR; ++r)
#pragma unroll
      for (int e = 0; e < 4; ++e) pin_register(acc[0][r][e]);  // read after the wait, not before
  }

  const bool split = gridDim.z > 1;
  if ((split && a.adding == SplitSums::kInCluster) || a.swiglu) {
    if constexpr (QUADS) tile_sums_by_quads<T>(a, acc, shared, tile, m0, first_row, out_row, t);
    else tile_sums_by_value<T>(a, acc, shared, tile, m0, first_row, out_row, t);
    return;
  }
  if (!a.direct_stores && (!split || a.adding == SplitSums::kInParts)) {
    store_tile<T>(a, acc, shared, tile, m0, first_row, out_row, t);
    return;
  }
  for_each_sum(acc, first_row, out_row, t, [&](int row, int c, float sum) {  // c: the tile's column
    row += m0;
    const int col = tile(c);
    if (row >= a.m || col < 0) return;
    const size_t at = static_cast<size_t>(row) * a.n + col;
    if (split && a.adding == SplitSums::kInParts) {
      a.sums[blockIdx.z * static_cast<size_t>(a.m) * a.n + at] = sum;
    } else if (split) {
      atomicAdd(a.sums + at, sum);
    } else {
      a.y[at] = __float2half(sum);
    }
  });
}

// Element i of `parts` sums buffers (`count` floats apart) added up, in part order.
__host__ __device__ inline float parts_total(const float* sums, int parts, int64_t count, int64_t i) {
  float total = 0.f;
  for (int part = 0; part < parts; ++part) total += sums[part * count + i];
  return total;
}

#if defined(__CUDACC__)
constexpr int kConvertValues = 4;  // sums a thread of sums_to_half adds up and converts
constexpr int kConvertBatch = 8;   // parts whose 16 bytes a thread reads before adding them

// total[v] (4 V values from `at` on) += the `parts` sums buffers (`count` floats apart, 16-byte
// aligned at `at`) in part order: kConvertBatch parts' reads issued before their adds (the same sums
// as parts_total's, element by element).
template <int V>
__device__ __forceinline__ void add_parts(const float* in, int parts, int64_t count, int64_t at, float4 (&total)[V]) {
  for (int first = 0; first < parts; first += kConvertBatch) {
    float4 part[kConvertBatch][V];
#pragma unroll
    for (int p = 0; p < kConvertBatch; ++p) {
      if (first + p >= parts) break;
#pragma unroll
      for (int v = 0; v < V; ++v) part[p][v] = reinterpret_cast<const float4*>(in + (first + p) * count + at)[v];
    }
#pragma unroll
    for (int p = 0; p < kConvertBatch; ++p) {
      if (first + p >= parts) break;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        total[v].x += part[p][v].x, total[v].y += part[p][v].y, total[v].z += part[p][v].z, total[v].w += part[p][v].w;
      }
    }
  }
}

// y = the `parts` sums buffers (`count` floats apart) added up in part order, as float16: a thread's
// kConvertValues values read 16 bytes a part (add_parts). Where the buffers or y are not aligned for
// that, value by value.
__global__ void sums_to_half(const float* in, int parts, __half* out, int64_t count) {
  wait_for_earlier_kernels();
  start_next_kernel();
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kConvertValues;
  if (i >= count) return;
  const bool vectors = count % kConvertValues == 0 && reinterpret_cast<uintptr_t>(in) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(out) % 8 == 0;
  if (!vectors) {
    for (int64_t j = i; j < i + kConvertValues && j < count; ++j) {
      out[j] = __float2half(parts_total(in, parts, count, j));
    }
    return;
  }
  float4 total[1] = {{0.f, 0.f, 0.f, 0.f}};
  add_parts(in, parts, count, i, total);
  const __half2 low = __floats2half2_rn(total[0].x, total[0].y), high = __floats2half2_rn(total[0].z, total[0].w);
  *reinterpret_cast<uint2*>(out + i) = make_uint2(*reinterpret_cast<const uint32_t*>(&low),
                                                  *reinterpret_cast<const uint32_t*>(&high));
}

// Whether the device launches thread block clusters (sm_90).
inline bool device_has_clusters() {
  int device = 0, clusters = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&clusters, cudaDevAttrClusterLaunch, device) == cudaSuccess && clusters != 0;
}

// Whether the device runs the warpgroup MMA tile (gemm_int4::kWarpgroup): compute capability 9.0
// exactly (the tile's code is sm_90a's, which no other GPU runs; the libraries that include this
// header build it: runtime/custom_ops/__init__.py, benchmarks/_nvcc.py).
inline bool device_has_wgmma() {
  int device = 0, major = 0, minor = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
         cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess && major == 9 &&
         minor == 0;
}

// How a call's kernels are launched: `programmatic`, the GEMM as a programmatic dependent launch of
// the kernel before it in the stream (where the device takes it: optimizer_pdl::programmatic_launch),
// which then reads its constant weights before that kernel is done; `convert_programmatic`, the
// conversion of K's parts after it so (it waits for the GEMM before reading the parts).
struct Launch {
  cudaStream_t stream;
  SplitSums sums;  // how K's parts add up their sums
  bool programmatic;
  bool add_parts = true;  // kInParts: false leaves K's stored parts in `sums` for the caller to add
  bool convert_programmatic = programmatic;
};

// The launch attribute that makes a kernel a programmatic dependent launch.
inline cudaLaunchAttribute programmatic_attribute() {
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  return attribute;
}

// The tile's kernel, K's `splits` parts added as `how` says (kInCluster: where the device
// launches clusters of that many such blocks, else by atomics). With SwiGLU, which needs a tile's
// whole sums in one place, K is split only where a cluster adds the parts.
// Returns what the caller converts after: the count of sums buffers to add up into y (0: none, y
// is written).
template <int MR, int NO, int STAGES, bool WG, int WR = 1, int SUB = 1, bool XREG = false>
const char* launch_tile(Args a, int splits, const Launch& how, int& buffers) {
  using T = Tile<MR, NO, STAGES, WG, WR, SUB>;
  auto kernel = a.swiglu ? gemm_int4_mma_kernel<MR, NO, STAGES, WG, WR, true, SUB, XREG>
                         : gemm_int4_mma_kernel<MR, NO, STAGES, WG, WR, false, SUB, XREG>;
  buffers = 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(T::kShared)) !=
      cudaSuccess) {
    return "GEMM int4: the device refused the tile's shared memory";
  }
  const TileRows tiles = TileRows::of(a, T::kBN, 0);
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3((tiles.outputs + tiles.columns - 1) / tiles.columns, (a.m + T::kBM - 1) / T::kBM, splits);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = T::kShared;
  config.stream = how.stream;
  cudaLaunchAttribute attributes[2] = {};
  attributes[0].id = cudaLaunchAttributeClusterDimension;
  attributes[0].val.clusterDim.x = 1;
  attributes[0].val.clusterDim.y = 1;
  attributes[0].val.clusterDim.z = splits;  // a tile's parts of K
  config.attrs = attributes;
  config.numAttrs = 1;
  // whether a cluster of `splits` such blocks fits the device (asked once a process, a tile and a
  // count of parts)
  static signed char fits[gemm_int4::kClusterParts + 1] = {};  // 0 unknown, 1 yes, -1 no
  const bool wants_cluster = how.sums == SplitSums::kInCluster && splits > 1 && splits <= gemm_int4::kClusterParts;
  if (wants_cluster && fits[splits] == 0) {
    int clusters = 0;
    fits[splits] = device_has_clusters() && cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) == cudaSuccess &&
                           clusters > 0
                       ? 1
                       : -1;
    cudaGetLastError();  // a refusal is an answer, not an error of this call
  }
  const bool cluster = wants_cluster && fits[splits] == 1;
  a.adding = cluster || how.sums != SplitSums::kInCluster ? how.sums : SplitSums::kByAtomics;
  if (!cluster) {
    if (splits > 1 && a.swiglu) {  // one part
      a.steps_per_split = a.k / kStepK;
      splits = 1;
      config.gridDim.z = 1;
    }
    buffers = splits == 1 ? 0 : a.adding == SplitSums::kInParts ? splits : 1;
    if (buffers == 1 &&
        cudaMemsetAsync(a.sums, 0, static_cast<size_t>(a.m) * a.n * sizeof(float), how.stream) != cudaSuccess) {
      return "GEMM int4: clearing the split sums failed";
    }
    config.numAttrs = 0;  // no cluster
  }
  if (how.programmatic) attributes[config.numAttrs++] = programmatic_attribute();
  return cudaLaunchKernelEx(&config, kernel, a) == cudaSuccess ? nullptr : "GEMM int4: the launch failed";
}

// `config`'s tile (gemm_int4_plan.h) for blocks of 8 MR rows: 128 or 256 outputs by mma.sync, 128 in
// two groups of rows (blocks of 8 rows: config 0's), 128 by the warpgroup MMA, or 128 two steps a
// stage where K's steps pair up (`a.steps_per_split` then even).
template <int MR, int STAGES>
const char* launch_rows(const Args& a, int config, int splits, const Launch& how, int& buffers) {
  if (config == gemm_int4::kWarpgroup) return launch_tile<MR, 1, STAGES, true>(a, splits, how, buffers);
  if (config == gemm_int4::kWarpgroupStaged) {
    return launch_tile<MR, 1, STAGES, true, 1, 1, true>(a, splits, how, buffers);
  }
  if (gemm_int4::stage_steps(config, a.k) == 2) return launch_tile<MR, 1, STAGES, false, 1, 2>(a, splits, how, buffers);
  if constexpr (MR >= 2) {
    if (config == gemm_int4::kRowGroups) return launch_tile<MR / 2, 2, STAGES, false, 2>(a, splits, how, buffers);
  }
  return config == 1 ? launch_tile<MR, 2, STAGES, false>(a, splits, how, buffers)
                     : launch_tile<MR, 1, STAGES, false>(a, splits, how, buffers);
}

// y = x . w^T (with a.swiglu: silu(gate) * up of its two halves) with `config`'s tile for blocks of
// block_rows(m, most_rows) rows (gemm_int4_plan.h), K cut into `splits` parts (splits_for's), their
// sums added as `how` says (SplitSums; `a.sums` as it says; with SwiGLU one part where no cluster
// adds them); the kernels as programmatic dependent launches where `how` says so and the device
// takes them.
template <int STAGES>
const char* launch(Args a, int config, int splits, Launch how, int most_rows = 64) {
  if (!gemm_int4::takes(a.k, a.block, a.x, a.codes) || config < 0 || config >= gemm_int4::kConfigs) {
    return "GEMM int4: K must be a multiple of 64, the block a power of two from 32, x and the codes 16-byte aligned";
  }
  if ((config == gemm_int4::kWarpgroup || config == gemm_int4::kWarpgroupStaged) && !device_has_wgmma()) {
    return "GEMM int4: the warpgroup MMA tile runs on compute capability 9.0 only (H100, H200)";
  }
  const bool programmatic = optimizer_pdl::programmatic_launch();  // the device takes them, not turned off
  how.programmatic = how.programmatic && programmatic;
  how.convert_programmatic = how.convert_programmatic && programmatic;
  const int unit = gemm_int4::stage_steps(config, a.k);  // steps of K a stage: a part takes a multiple
  a.steps_per_split = gemm_int4::steps_per_split(a.k, splits, unit);
  splits = gemm_int4::parts_of(a.k, splits, unit);
  // a warp over all of a block's rows (its weights dequantized once a block)
  const char* failure = nullptr;
  int buffers = 0;
  switch (gemm_int4::block_rows(a.m, most_rows)) {
    case 8:
      failure = launch_rows<1, STAGES>(a, config, splits, how, buffers);
      break;
    case 16:
      failure = launch_rows<2, STAGES>(a, config, splits, how, buffers);
      break;
    case 32:
      failure = launch_rows<4, STAGES>(a, config, splits, how, buffers);
      break;
    default:
      failure = launch_rows<8, STAGES>(a, config, splits, how, buffers);
  }
  if (failure != nullptr) return failure;
  const int64_t count = static_cast<int64_t>(a.m) * a.n;
  if (buffers > 0 && (how.add_parts || how.sums != SplitSums::kInParts)) {
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(static_cast<unsigned>((count + 256 * kConvertValues - 1) / (256 * kConvertValues)));
    config.blockDim = dim3(256);
    config.stream = how.stream;
    cudaLaunchAttribute attribute = programmatic_attribute();
    config.attrs = &attribute;
    config.numAttrs = how.convert_programmatic ? 1 : 0;
    if (cudaLaunchKernelEx(&config, sums_to_half, static_cast<const float*>(a.sums), buffers, a.y, count) !=
        cudaSuccess) {
      return "GEMM int4: the conversion's launch failed";
    }
  }
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

#endif  // __CUDACC__: the launch

}  // namespace gemm_int4_mma
