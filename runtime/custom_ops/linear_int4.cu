// The LinearInt4 family on CUDA: the Linear family's computation (cuda_kernels.h's LinearCall)
// with 4-bit weights in onnxruntime MatMulNBits' layout (Int4Weights), float16 activations, fp32
// sums.
//
// Up to kGemvRows rows (decode): one GEMV kernel, built as linear.cu's: each output's codes read
// in 16-byte chunks (32 codes, within one quantization block: the block is a multiple of 32),
// K split over 1-8 warps, the norm formed per block in shared memory, gate and up rows summed by
// the same warp. A 32-bit word's eight codes become four half2 pairs exactly (the nibble or'ed
// into 1024.0's bits, less 1024 + zero point); the products and sums are fp32, and each chunk's
// sum is scaled once (with a norm whose rows do not fit shared memory: our norm kernel first).
// More rows, up to kGemmRows (batched decode), of a shape it takes: gemm_int4_mma.cuh's tensor-core
// GEMM (the default), the codes read straight into the MMA's registers (the weights read once, at 4
// bits; K split over the grid where the outputs alone would not fill the GPU, its parts added by
// atomics, or with SwiGLU in its epilogue summed in a thread block cluster on sm_90; from
// kWarpgroupRows rows on an H100 / H200 by Hopper's warpgroup MMA, elsewhere by mma.sync). Otherwise, or
// with OPTIMIZER_INT4_GEMM=dequantize: the weights dequantized into the scratch band by band
// (int4_bands.h: up to 32 MB, so that a band stays in L2 for the GEMM that reads it; whole tiles of
// rows), each band multiplied by cuBLAS into its columns of the output, SwiGLU after. The norm
// first, as linear.cu does it. Two linears with a norm between (LinearInt4NormLinearInt4[SwiGLU]):
// the first one's outputs into the scratch and the second one's call of them; or, where the first
// GEMM stores K's parts, its parts left in the scratch and added up by the norm's kernel
// (parts_skip_norm_rows: the same float16 values as the conversion kernel writes, the row held in
// registers), the second GEMM launched as its programmatic dependent (and at few rows o's GEMM as
// the attention's). The GEMM's
// CUDA tests (tests/test_custom_ops_int4.py) passed inside onnxruntime on an H100 (run17, 2026-12-05;
// again in run63), where a Llama-3.2-1B-shaped int4 engine served 64 concurrent requests at 21,150-21,200 out tok/s
// with it against 16,450-17,780 with the bands.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <stdlib.h>
#include <string.h>

#include <algorithm>

#include "cuda_kernels.h"
#include "gemm_int4_mma.cuh"
#include "int4_bands.h"
#include "linear_common.cuh"

namespace {

using namespace linear_common;

constexpr int kCodes = 32;                  // codes a 16-byte chunk holds
constexpr int kUnroll = 2;                  // chunks a lane's loop has in flight (unrolled)
constexpr bool kProgrammatic = false;       // the GEMVs as programmatic dependent launches (linear.cu's)
constexpr const char* kDefaultGemm = "mma";  // above kGemvRows without OPTIMIZER_INT4_GEMM
constexpr int kGemmRows = 128;              // rows gemm_int4_mma.cuh takes
constexpr int kGemmConfig = 0;              // its tile (gemm_int4_plan.h's configurations: 128 outputs)
constexpr int kGemmStages = 4;              // its cp.async pipeline's depth
// Where K is split (the call's tiles alone do not fill the GPU): config 0's tile taking two steps of
// K a stage (gemm_int4::kPairedSteps: one barrier and one round of copies a pair), 3 stages deep. The
// 1B int4 engine's captured step as served (H100, gpu_kernels.py --replay-only, model replay) at 16
// rows 1.084 ms against 1.099 with one step a stage (run50; 1.071 against 1.109 in run53, a build
// with q/k/v in 6 parts); at 64 rows 1.766 against 1.772 (1.764 against 1.766). Not where K is not
// split (the lm_head: one part of 32 steps a block), slower there in the probe (run49: 93.2 against
// 89.4 us at 16 rows, 168.9 against 163.6 at 64).
constexpr int kPairedStages = 3;
constexpr const char* kDefaultSteps = "paired";  // without OPTIMIZER_INT4_STEPS
// From kWarpgroupRows rows on, on an H100 or H200: gemm_int4_plan.h's kWarpgroupStaged tile (Hopper's
// warpgroup MMA, x staged through registers) for every call. The 1B int4 engine's captured step as
// served (H100, run73, gpu_kernels.py --replay-only, model replay, two rounds) at 64 rows: 1.465 / 1.464
// ms, against 1.626 / 1.626 with mma.sync's tiles (OPTIMIZER_INT4_TILE=mma), 1.541 / 1.546 with it for
// all but the SwiGLU calls, 1.574 / 1.573 only where K is split (fp16-custom: 1.617 / 1.615); at 32
// rows 1.143 / 1.138 against 1.157 / 1.159 (fp16: 1.409 / 1.413). Below 32 rows the probe found it
// slower (gpu_int4_gemm_probe.py, run72, 1B at 16 rows: the lm_head 113.4 against 88.2 us).
constexpr const char* kDefaultTile = "warpgroup";  // without OPTIMIZER_INT4_TILE
constexpr int kWarpgroupRows = 32;
constexpr int kGemmBlocksPerSm = 2;         // the blocks an SM its split-K grid aims at (two fit an SM)
constexpr int kSwigluBlocksPerSm = 1;       // with SwiGLU (K's parts in a thread block cluster)
constexpr const char* kDefaultSplit = "parts";  // how its K's parts add up without OPTIMIZER_INT4_SPLIT
// Which of its kernels launch as programmatic dependents (OPTIMIZER_CUDA_PDL=0: none). Not the GEMM:
// in the 1B int4 engine's captured step at 64 rows (H100, run44, gpu_kernels.py --replay-only) the
// model's replay took 1.742-1.759 ms with the GEMM launched plainly and its conversions and parts
// norms as dependents, 1.793-1.798 with all three as dependents, 1.758-1.761 with none; run45
// (another H100) 1.778 this way against 1.806 with none, at 16 rows 1.117 against 1.120. Each GEMM
// alone, probed in a loop, was faster as a dependent (run41).
constexpr bool kGemmProgrammatic = false;
// Except the GEMM of a chain's second linear (LinearInt4NormLinearInt4[SwiGLU]: q/k/v after the
// layer before's down, gate/up after o), which follows the chain's parts norm (one block a row, one
// wave, letting its dependents start at once): launched as its programmatic dependent, its blocks
// read their first stages of codes and scales while the norm runs. The 1B int4 engine's captured
// step (H100, gpu_kernels.py --replay-only, model replay) at 64 rows 1.700-1.708 ms against
// 1.762-1.781 without, at 16 rows 1.060-1.062 against 1.096-1.117 (run55); only the GEMMs without
// SwiGLU so 1.741-1.759. Not the chain's first GEMM, after a kernel of many waves (o after the
// attention, down after gate/up): at 64 rows 1.723-1.727 with o as a dependent, 1.796-1.797 with
// down, against 1.696-1.705 (run56); but see kFirstAfterAttentionRows.
constexpr bool kGemmAfterNormProgrammatic = true;
// Up to this many rows the chain's first GEMM before gate/up (o, after the attention, whose kernel
// at few rows is one short wave) is the attention's programmatic dependent: the 1B int4 engine's
// captured step at 16 rows 1.032-1.033 ms against 1.059-1.061 (run56), 1.003 / 1.020 against 1.042 /
// 1.043 (run62; at 64 rows, where it stays a plain launch, 1.686 / 1.688 against 1.687 / 1.693);
// 1.023-1.062 in run63 (three replays).
constexpr int64_t kFirstAfterAttentionRows = 32;
constexpr bool kPartsProgrammatic = true;   // its conversion of K's parts, and the chain's parts norm

struct Int4Args {
  const __half* x;
  const __half* skip;
  const __half* gamma;
  const uint8_t* codes;
  const __half* scales;
  const uint8_t* zeros;  // null: 8
  __half* y;
  __half* sum;
  int n;      // outputs (rows of codes: n, or 2n with SWIGLU)
  int k;
  int block;  // K values a scale covers, a multiple of kCodes
  float epsilon;
};

Int4Args typed(const LinearCall& c, const Int4Weights& w) {
  return {static_cast<const __half*>(c.x), static_cast<const __half*>(c.skip), static_cast<const __half*>(c.gamma),
          static_cast<const uint8_t*>(w.codes), static_cast<const __half*>(w.scales),
          static_cast<const uint8_t*>(w.zeros), static_cast<__half*>(c.y), static_cast<__half*>(c.sum),
          static_cast<int>(c.n), static_cast<int>(c.k), static_cast<int>(w.block), c.epsilon};
}

// The zero point of row `row`'s quantization block `b` (blocks per row: `blocks`).
__device__ __forceinline__ int zero_point(const uint8_t* zeros, int64_t row, int b, int blocks) {
  if (zeros == nullptr) return 8;
  const uint8_t byte = zeros[row * ((blocks + 1) / 2) + b / 2];
  return b % 2 == 0 ? byte & 0xF : byte >> 4;
}

// Codes j and j + 4 (0 <= j < 4) of `word` less the zero point (`offset` = 1024 + zero in both
// halves), exactly, in fp32. Code i of the word is byte i/2's low (even i) or high nibble; or'ed
// into 1024.0's bits, a nibble becomes 1024 + code in a float16.
__device__ __forceinline__ float2 code_pair(uint32_t word, int j, __half2 offset) {
  const uint32_t bits = ((word >> (4 * j)) & 0x000F000Fu) | 0x64006400u;
  return __half22float2(__hsub2(*reinterpret_cast<const __half2*>(&bits), offset));
}

// The eight codes of `word` less the zero point, times x's eight values xf, summed.
__device__ __forceinline__ float dot_word(uint32_t word, __half2 offset, const float (&xf)[8]) {
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 w = code_pair(word, j, offset);
    sum = fmaf(w.x, xf[j], fmaf(w.y, xf[j + 4], sum));
  }
  return sum;
}

// One block: kWarps / WPO outputs, each summed by WPO warps over interleaved 16-byte chunks of
// its codes; with SWIGLU a warp sums the output's gate row n and up row n + N together.
template <int ROWS, int WPO, bool NORM, bool SWIGLU>
__global__ void __launch_bounds__(kThreads) gemv_int4(Int4Args a) {
  constexpr int kOuts = kWarps / WPO;
  constexpr int kSums = SWIGLU ? 2 : 1;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * kOuts + warp / WPO;
  const int part = warp % WPO;
  const int chunks = a.k / kCodes;
  const int blocks = a.k / a.block;
  const int chunks_per_block = a.block / kCodes;
  const bool live = n < a.n;
  int64_t rows_w[kSums];
#pragma unroll
  for (int s = 0; s < kSums; ++s) rows_w[s] = static_cast<int64_t>(n) + s * a.n;
  if constexpr (kProgrammatic) {
    let_next_start();
    wait_for_inputs();
  }
  const __half* x = a.x;
  if constexpr (NORM) {
    extern __shared__ uint4 normalized[];
    __half* xs = reinterpret_cast<__half*>(normalized);
    skip_norm<ROWS>(a, xs, blockIdx.x == 0 ? a.sum : nullptr);
    x = xs;
  }
  float acc[kSums][ROWS];
#pragma unroll
  for (int s = 0; s < kSums; ++s)
#pragma unroll
    for (int m = 0; m < ROWS; ++m) acc[s][m] = 0.f;
  if (live) {
#pragma unroll kUnroll
    for (int c = part * 32 + lane; c < chunks; c += 32 * WPO) {
      const int b = c / chunks_per_block;
      uint4 codes[kSums];
      float scale[kSums];
      __half2 offset[kSums];
#pragma unroll
      for (int s = 0; s < kSums; ++s) {
        codes[s] = __ldg(reinterpret_cast<const uint4*>(a.codes + rows_w[s] * (a.k / 2)) + c);
        scale[s] = __half2float(a.scales[rows_w[s] * blocks + b]);
        offset[s] = __float2half2_rn(1024.f + static_cast<float>(zero_point(a.zeros, rows_w[s], b, blocks)));
      }
#pragma unroll
      for (int m = 0; m < ROWS; ++m) {
        float part_sum[kSums];
#pragma unroll
        for (int s = 0; s < kSums; ++s) part_sum[s] = 0.f;
#pragma unroll
        for (int q = 0; q < 4; ++q) {  // the chunk's four words, eight x values each
          const uint4 xv = load16(x + static_cast<size_t>(m) * a.k + kCodes * c + 8 * q);
          const __half2* xh = reinterpret_cast<const __half2*>(&xv);
          float xf[8];
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const float2 f = __half22float2(xh[j]);
            xf[2 * j] = f.x;
            xf[2 * j + 1] = f.y;
          }
#pragma unroll
          for (int s = 0; s < kSums; ++s) {
            const uint32_t word = reinterpret_cast<const uint32_t*>(&codes[s])[q];
            part_sum[s] += dot_word(word, offset[s], xf);
          }
        }
#pragma unroll
        for (int s = 0; s < kSums; ++s) acc[s][m] = fmaf(part_sum[s], scale[s], acc[s][m]);
      }
    }
  }
  store_outputs<ROWS, WPO, SWIGLU>(acc, a.y, a.n, warp, lane);
}

// Codes rows [first, first + count) dequantized to float16 into out (count, K): a thread a
// 32-bit word (eight codes), written as one 16-byte store.
__global__ void dequantize_rows(Int4Args a, int64_t first, int64_t count, __half* out) {
  const int words = a.k / 8;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count * words) return;
  const int64_t r = i / words;
  const int word_index = static_cast<int>(i % words);
  const int64_t row = first + r;
  const int b = word_index * 8 / a.block;
  const int blocks = a.k / a.block;
  const uint32_t word = reinterpret_cast<const uint32_t*>(a.codes + row * (a.k / 2))[word_index];
  const float scale = __half2float(a.scales[row * blocks + b]);
  const __half2 offset = __float2half2_rn(1024.f + static_cast<float>(zero_point(a.zeros, row, b, blocks)));
  float w[8];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 f = code_pair(word, j, offset);
    w[j] = f.x;      // code j
    w[j + 4] = f.y;  // code j + 4
  }
  uint4 packed;
  __half2* h = reinterpret_cast<__half2*>(&packed);
#pragma unroll
  for (int j = 0; j < 4; ++j) h[j] = __floats2half2_rn(w[2 * j] * scale, w[2 * j + 1] * scale);
  *reinterpret_cast<uint4*>(out + r * a.k + 8 * word_index) = packed;
}

// The norm of a chain's first GEMM's stored K parts: what parts_skip_norm_rows reads and writes.
struct PartsNorm {
  Int4Args a;  // skip, gamma, sum, k, epsilon (the norm's call)
  const float* parts;
  int count;
  __half* normed;  // (rows, k)
};

// x (float16) of a chain's stored parts: `count` parts of fp32 sums ((rows, k) floats each, one after
// another) added in part order (gemm_int4_mma.cuh's add_parts, 32 bytes a part a thread) and rounded to
// float16, the 8 values from `at` on: the same x, bit for bit, as the GEMM's conversion (sums_to_half)
// writes.
__device__ __forceinline__ uint4 parts_chunk(const PartsNorm& p, size_t values, size_t at) {
  float4 total[2] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
  gemm_int4_mma::add_parts(p.parts, p.count, static_cast<int64_t>(values), static_cast<int64_t>(at), total);
  uint4 x;
  __half2* xh = reinterpret_cast<__half2*>(&x);
#pragma unroll
  for (int v = 0; v < 2; ++v) {
    xh[2 * v] = __floats2half2_rn(total[v].x, total[v].y);
    xh[2 * v + 1] = __floats2half2_rn(total[v].z, total[v].w);
  }
  return x;
}

// linear_common's skip_norm_rows of x = parts_chunk's, one block a row, the row held in registers: each
// thread's at most CHUNKS chunks of 8 values (those skip_norm's thread takes: c, c + kThreads, ...)
// read at once (their parts, skip and gamma), x + skip's squares summed over the block, then the row's
// sum and normed values written; linear_common's chunk_sum and chunk_normed do skip_norm's arithmetic,
// so the outputs are skip_norm_rows' of the converted x, bit for bit. Launched as a programmatic
// dependent launch where the device takes it: it waits for the parts, then lets the kernel after it
// start. On an H100 the 1B shape's 64 rows of 8 parts took 3.5-3.6 us a norm (run43, plain launches)
// writing x to global memory and reading it back twice (skip_norm's two passes: parts_skip_norm_long_rows
// below), against 2.3 for skip_norm_rows alone; the 1B int4 engine's captured step (gpu_kernels.py
// --replay-only, model replay) at 16 rows 1.049 ms with the rows in registers against 1.074 with the
// two passes, at 64 rows 1.715 against 1.717 (run58, one replay each). A row over a cluster of two
// blocks (at 64 rows 128 SMs reading the parts, not 64; branch exp/last-part) was slower: 1.723-1.727
// against 1.699-1.701 (run65).
template <int CHUNKS>
__global__ void __launch_bounds__(kThreads) parts_skip_norm_rows(PartsNorm p) {
  wait_for_inputs();
  let_next_start();
  const int chunks = p.a.k / 8;
  const size_t at = static_cast<size_t>(blockIdx.x) * p.a.k, values = static_cast<size_t>(gridDim.x) * p.a.k;
  uint4 skip[CHUNKS], gamma[CHUNKS], sums[CHUNKS];
#pragma unroll
  for (int i = 0; i < CHUNKS; ++i) {
    const int c = threadIdx.x + i * kThreads;
    if (c < chunks) {
      skip[i] = load16(p.a.skip + at + 8 * c);
      gamma[i] = load16(p.a.gamma + 8 * c);
    }
  }
  float squares[1] = {0.f};
#pragma unroll
  for (int i = 0; i < CHUNKS; ++i) {
    const int c = threadIdx.x + i * kThreads;
    if (c < chunks) sums[i] = chunk_sum(parts_chunk(p, values, at + 8 * c), skip[i], squares[0]);
  }
  block_sums<1>(squares);
  const float scale = rms_scale(squares[0], p.a.k, p.a.epsilon);
#pragma unroll
  for (int i = 0; i < CHUNKS; ++i) {
    const int c = threadIdx.x + i * kThreads;
    if (c < chunks) {
      if (p.a.sum != nullptr) *reinterpret_cast<uint4*>(p.a.sum + at + 8 * c) = sums[i];
      *reinterpret_cast<uint4*>(p.normed + at + 8 * c) = chunk_normed(sums[i], gamma[i], scale);
    }
  }
}

// The chunks a thread of parts_skip_norm_rows holds in registers at most (K up to 16384).
constexpr int kNormChunks = 8;

// parts_skip_norm_rows for a row longer than its registers hold: each thread first writes its chunks of
// x into `normed`, where skip_norm (whose threads take the same chunks) reads them back and normalizes
// them in place.
__global__ void __launch_bounds__(kThreads) parts_skip_norm_long_rows(PartsNorm p) {
  wait_for_inputs();
  let_next_start();
  const size_t at = static_cast<size_t>(blockIdx.x) * p.a.k, values = static_cast<size_t>(gridDim.x) * p.a.k;
  __half* row_normed = p.normed + at;
  for (int c = threadIdx.x; c < p.a.k / 8; c += blockDim.x) {
    *reinterpret_cast<uint4*>(row_normed + 8 * c) = parts_chunk(p, values, at + 8 * c);
  }
  Int4Args row = p.a;
  row.x = row_normed;
  row.skip += at;
  skip_norm<1>(row, row_normed, p.a.sum + at);
}

// The chain's norm of its first GEMM's stored parts (`p`), `rows` blocks, on stream `s`.
void launch_parts_norm(const PartsNorm& p, int64_t rows, cudaStream_t s) {
  const int per_thread = static_cast<int>((p.a.k / 8 + kThreads - 1) / kThreads);
  const unsigned blocks = static_cast<unsigned>(rows);
  if (per_thread <= 1) {
    launch_kernel<kPartsProgrammatic>(parts_skip_norm_rows<1>, blocks, 0, s, p);
  } else if (per_thread <= 2) {
    launch_kernel<kPartsProgrammatic>(parts_skip_norm_rows<2>, blocks, 0, s, p);
  } else if (per_thread <= 4) {
    launch_kernel<kPartsProgrammatic>(parts_skip_norm_rows<4>, blocks, 0, s, p);
  } else if (per_thread <= kNormChunks) {
    launch_kernel<kPartsProgrammatic>(parts_skip_norm_rows<kNormChunks>, blocks, 0, s, p);
  } else {
    launch_kernel<kPartsProgrammatic>(parts_skip_norm_long_rows, blocks, 0, s, p);
  }
}

// The 4-bit family for linear_common's launch_gemv.
struct Int4Gemv {
  using Args = Int4Args;
  static constexpr int kChunkValues = kCodes;
  static constexpr bool programmatic = kProgrammatic;
  template <int ROWS, int WPO, bool NORM, bool SWIGLU>
  static auto kernel() { return gemv_int4<ROWS, WPO, NORM, SWIGLU>; }
};

// Up to kGemvRows rows, K and the block in whole chunks: shapes the GEMV takes.
bool gemv_shape(const LinearCall& c, const Int4Weights& w) {
  return c.rows <= kGemvRows && c.k % kCodes == 0 && w.block % kCodes == 0;
}

// The GEMV takes the whole call: its shape, aligned data, and with a norm its normalized rows fit
// a block's shared memory.
bool fused(const LinearCall& c, const Int4Weights& w) {
  if (!gemv_shape(c, w) || !aligned(c.x) || !aligned(w.codes)) return false;
  return !c.norm || (aligned(c.skip) && aligned(c.gamma) && aligned(c.sum) && c.rows * c.k * 2 <= kNormSharedBytes);
}

// The GEMV takes the rows our norm kernel wrote into the scratch: only the norm kept it from the
// whole call (e.g. 4 rows of K = 8192 do not fit shared memory).
bool gemv_after_norm(const LinearCall& c, const Int4Weights& w) {
  return c.norm && !fused(c, w) && gemv_shape(c, w) && aligned(w.codes);
}

// Rows of codes the call reads, and the outputs of its GEMM before SwiGLU: n, or 2n with SwiGLU.
int64_t codes_rows(const LinearCall& c) { return c.swiglu ? 2 * c.n : c.n; }

// Environment variable `variable`'s value as an index into `names` (`fallback` where it is unset
// or empty), or `count` for any other value: the callers read it once a process.
int env_choice(const char* variable, const char* fallback, const char* const* names, int count) {
  const char* env = getenv(variable);
  const char* name = env == nullptr || *env == '\0' ? fallback : env;
  int i = 0;
  while (i < count && strcmp(name, names[i]) != 0) ++i;
  return i;
}

// The path above kGemvRows rows, as OPTIMIZER_INT4_GEMM asks (kDefaultGemm where unset): "mma",
// gemm_int4_mma.cuh's GEMM; "dequantize", the bands for cuBLAS; any other value: neither (every
// call refused).
enum class Gemm { kMma, kDequantize, kUnknown };

Gemm gemm_choice() {
  static const char* const names[] = {"mma", "dequantize"};
  static const Gemm choice = static_cast<Gemm>(env_choice("OPTIMIZER_INT4_GEMM", kDefaultGemm, names, 2));
  return choice;
}

// How the GEMM adds up K's parts without SwiGLU, as OPTIMIZER_INT4_SPLIT asks (kDefaultSplit where
// unset): "parts", each part's sums stored and added in part order by the conversion (no memset;
// the same sums every call); "atomics", into a zeroed buffer, converted after; any other value:
// none (every call refused).
enum class Split { kParts, kAtomics, kUnknown };

Split split_choice() {
  static const char* const names[] = {"parts", "atomics"};
  static const Split choice = static_cast<Split>(env_choice("OPTIMIZER_INT4_SPLIT", kDefaultSplit, names, 2));
  return choice;
}

// Whether the GEMM takes two steps of K a stage where K is split, as OPTIMIZER_INT4_STEPS asks
// (kDefaultSteps where unset): "paired" (kPairedStages deep), or "single" (one step a stage,
// kGemmStages deep, every call); any other value: neither (every call refused).
enum class Steps { kPaired, kSingle, kUnknown };

Steps steps_choice() {
  static const char* const names[] = {"paired", "single"};
  static const Steps choice = static_cast<Steps>(env_choice("OPTIMIZER_INT4_STEPS", kDefaultSteps, names, 2));
  return choice;
}

// gemm_int4_mma.cuh's way of adding K's parts for the call: with SwiGLU (whose epilogue needs a
// tile's whole sums in one place) in a thread block cluster (where none fits, K is not split);
// otherwise as split_choice says. The 1B shape's linears at 64 rows (gpu_int4_gemm_probe.py, K in 6-8
// parts): on an H100 (run18) q/k/v 15.0 us in clusters against 13.7 by atomics, o 11.7 against
// 10.6, down 27.6 against 20.7 (the cluster barrier's wait was the most stalled instruction of
// Nsight Compute's q/k/v profile); on an H200 with programmatic launches (run19) the step's linears
// 1256 us with parts stored against 1406 by atomics; end to end on an H100 (run20) the two alike.
// The conversion after q/k/v's stored parts costs the 1B int4 step 62 us at 64 rows (run64, skipped),
// yet both ways measured without it were slower (H100, the model's replay at 64 rows): q/k/v's parts
// added in a cluster 1.709 ms against 1.687 (run62), each tile's last part to arrive adding its
// tile's parts (branch exp/last-part) 1.806-1.812 against 1.689-1.697 (run65; our reading, not
// profiled: 24 last blocks then read 8 parts of 32 KB each, where the conversion spreads them over the GPU).
gemm_int4_mma::SplitSums split_sums(const LinearCall& call) {
  using gemm_int4_mma::SplitSums;
  if (call.swiglu) return SplitSums::kInCluster;
  return split_choice() == Split::kParts ? SplitSums::kInParts : SplitSums::kByAtomics;
}

// Whether a call of more rows than the GEMV takes goes to gemm_int4_mma.cuh's GEMM: asked for,
// up to kGemmRows rows of a shape it takes (with a norm, x is the scratch's aligned normed rows).
bool tiled_gemm(const LinearCall& c, const Int4Weights& w) {
  return gemm_choice() == Gemm::kMma && c.rows <= kGemmRows &&
         gemm_int4::takes(c.k, w.block, c.norm ? w.codes : c.x, w.codes);
}

// The blocks the call's split-K grid aims at: kGemmBlocksPerSm on each of the device's SMs, or
// kSwigluBlocksPerSm with SwiGLU. On an H100 (run23, gpu_int4_gemm_probe.py, K's parts stored,
// programmatic launches) two blocks an SM against one: the 1B shape's q/k/v at 64 rows 11.7 against
// 13.1 us, its down at 128 rows 26.1 against 37.1, the 8B shape's o and down at 64 rows 17.1 and
// 41.1 against 22.1 and 59.4; none slower by more than 0.1 us. Its gate/up with SwiGLU at 64 rows
// (run21): 34.0 against 30.7 (more parts a cluster).
int gemm_fill(const LinearCall& c) {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms < 1) {
    sms = 132;  // an H100 / H200's
  }
  return (c.swiglu ? kSwigluBlocksPerSm : kGemmBlocksPerSm) * sms;
}

// The parts gemm_int4_mma.cuh cuts K into for the call (its (rows, outputs) GEMM) with `config`'s tile:
// at most a cluster's (K's parts of a chain's first GEMM, added by the norm, are the same as the
// conversion would add, bit for bit).
int splits_with(const LinearCall& c, int config) {
  return gemm_int4::splits_for(static_cast<int>(c.rows), static_cast<int>(codes_rows(c)), static_cast<int>(c.k),
                               config, gemm_fill(c), 64, gemm_int4::kClusterParts);
}

// The tensor-core GEMM's tile, as OPTIMIZER_INT4_TILE asks (kDefaultTile where unset): "warpgroup",
// gemm_int4_plan.h's kWarpgroupStaged from kWarpgroupRows rows on where the device has Hopper's
// warpgroup MMA (compute capability 9.0), mma.sync's tiles elsewhere; "mma", mma.sync's tiles for
// every call; any other value: neither (every call refused).
enum class Tile { kWarpgroup, kMma, kUnknown };

Tile tile_choice() {
  static const char* const names[] = {"warpgroup", "mma"};
  static const Tile choice = static_cast<Tile>(env_choice("OPTIMIZER_INT4_TILE", kDefaultTile, names, 2));
  return choice;
}

// Whether the call takes the warpgroup tile (kWarpgroupStaged), as tile_choice allows.
bool warpgroup_tile(const LinearCall& c) {
  return tile_choice() == Tile::kWarpgroup && c.rows >= kWarpgroupRows && gemm_int4_mma::device_has_wgmma();
}

// The call's tile (gemm_int4_plan.h's configurations) and the parts K is cut into by it.
struct GemmPlan {
  int config;
  int splits;
};

// The warpgroup tile where warpgroup_tile says; else two steps of K a stage where K is split (by
// kGemmConfig's tile) and its steps pair up, as steps_choice allows; else kGemmConfig.
GemmPlan gemm_plan(const LinearCall& c) {
  if (warpgroup_tile(c)) return {gemm_int4::kWarpgroupStaged, splits_with(c, gemm_int4::kWarpgroupStaged)};
  const int single = splits_with(c, kGemmConfig);
  const bool paired = steps_choice() == Steps::kPaired && gemm_int4::stage_steps(gemm_int4::kPairedSteps, c.k) == 2;
  if (paired && single > 1) return {gemm_int4::kPairedSteps, splits_with(c, gemm_int4::kPairedSteps)};
  return {kGemmConfig, single};
}

// `values` float16 values rounded up to 16 bytes: the scratch's parts each start aligned.
int64_t rounded(int64_t values) { return (values + 7) / 8 * 8; }

// The float16 values of the scratch that `buffers` (rows, outputs) buffers of fp32 sums take.
int64_t sums_halves(int64_t buffers, int64_t rows, int64_t outputs) { return 2 * buffers * rows * outputs; }

// Codes rows a dequantized band holds.
int64_t band_rows(const LinearCall& c) {
  return int4_bands::band_rows(codes_rows(c), c.k);
}

// The (rows, outputs) GEMM by bands: each band of codes rows dequantized into `band` (the
// scratch), then multiplied by cuBLAS into its columns of `out`.
const char* dequantized_gemm(const LinearCall& call, const Int4Args& a, const __half* x, __half* band, __half* out,
                             void* cublas, cudaStream_t s) {
  const int64_t total = codes_rows(call);
  const int64_t rows_a_band = band_rows(call);
  for (int64_t first = 0; first < total; first += rows_a_band) {
    const int64_t count = std::min(rows_a_band, total - first);
    const int64_t words = count * (call.k / 8);
    dequantize_rows<<<static_cast<unsigned>((words + kThreads - 1) / kThreads), kThreads, 0, s>>>(a, first, count,
                                                                                                 band);
    if (const char* failure = launched()) return failure;
    if (const char* failure = gemm(x, band, out + first, call.rows, count, call.k, total, cublas)) return failure;
  }
  return nullptr;
}

// The (rows, outputs) GEMM by gemm_int4_mma.cuh into the call's y, SwiGLU folded in; `sums`: its
// split sums' floats (with `add_parts` false, K's stored parts are left there, y not written);
// `programmatic`: launched as the programmatic dependent of the kernel before it.
const char* mma_gemm(const LinearCall& call, const Int4Args& a, const __half* x, float* sums, cudaStream_t s,
                     bool add_parts, bool programmatic) {
  gemm_int4_mma::Args g{};
  g.x = x;
  g.codes = a.codes;
  g.scales = a.scales;
  g.zeros = a.zeros;
  g.y = a.y;
  g.sums = sums;
  g.swiglu = call.swiglu ? 1 : 0;
  g.m = static_cast<int>(call.rows);
  g.n = static_cast<int>(codes_rows(call));
  g.k = a.k;
  g.block = a.block;
  const gemm_int4_mma::Launch how{s, split_sums(call), programmatic, add_parts, kPartsProgrammatic};
  const GemmPlan plan = gemm_plan(call);
  return plan.config == gemm_int4::kPairedSteps
             ? gemm_int4_mma::launch<kPairedStages>(g, plan.config, plan.splits, how)
             : gemm_int4_mma::launch<kGemmStages>(g, plan.config, plan.splits, how);
}

// What keeps the CUDA kernels from a call (null: nothing).
const char* call_problem(const LinearCall& call, const Int4Weights& weights) {
  if (call.rows > INT32_MAX || call.n > INT32_MAX / 2 || call.k > INT32_MAX) {
    return "LinearInt4: more than 2^31 - 1 rows, outputs or inputs";
  }
  if (call.k % 8 != 0 || weights.block % 8 != 0 || reinterpret_cast<uintptr_t>(weights.codes) % 4 != 0) {
    return "LinearInt4: on CUDA K and the block must be multiples of 8 and the codes 4-byte aligned";
  }
  if (gemm_choice() == Gemm::kUnknown) {
    return "LinearInt4: OPTIMIZER_INT4_GEMM must be mma (the tensor-core GEMM above 4 rows) or dequantize (bands "
           "for cuBLAS)";
  }
  if (steps_choice() == Steps::kUnknown) {
    return "LinearInt4: OPTIMIZER_INT4_STEPS must be paired (two steps of K a stage of the tensor-core GEMM where K "
           "is split) or single (one step a stage)";
  }
  if (tile_choice() == Tile::kUnknown) {
    return "LinearInt4: OPTIMIZER_INT4_TILE must be warpgroup (Hopper's warpgroup MMA from 32 rows on, where the "
           "GPU has it) or mma (mma.sync's tiles for every call)";
  }
  if (split_choice() == Split::kUnknown) {
    return "LinearInt4: OPTIMIZER_INT4_SPLIT must be parts (K's parts of the tensor-core GEMM stored, added in order "
           "after) or atomics (added by atomics)";
  }
  return nullptr;
}

// The parts of K a chain's first linear leaves for the norm's kernel to add up (0: it writes its
// outputs in float16): where linear_int4_cuda would run it through the tensor-core GEMM with K's
// parts stored.
int chain_parts(const LinearCall& first, const Int4Weights& w) {
  if (fused(first, w) || !tiled_gemm(first, w) || split_sums(first) != gemm_int4_mma::SplitSums::kInParts) return 0;
  const GemmPlan plan = gemm_plan(first);  // as gemm_int4_mma::launch cuts K for it
  const int parts = gemm_int4::parts_of(static_cast<int>(first.k), plan.splits,
                                        gemm_int4::stage_steps(plan.config, first.k));
  return parts > 1 ? parts : 0;
}

// `call` reading its x from the scratch (whose regions start 16-byte aligned where the scratch does:
// linear_int4_chain_cuda refuses one that does not), for the scratch it needs.
LinearCall x_in_scratch(const LinearCall& call) {
  alignas(16) static const __half kAlignedPlaceholder[8] = {};
  LinearCall c = call;
  c.x = kAlignedPlaceholder;
  return c;
}

// linear_int4_cuda's call on stream `s`, its tensor-core GEMM launched as the programmatic dependent of
// the kernel before it where `gemm_programmatic`.
const char* linear_int4(const LinearCall& call, const Int4Weights& weights, cudaStream_t s, void* cublas,
                        bool gemm_programmatic) {
  if (const char* problem = call_problem(call, weights)) return problem;
  Int4Args a = typed(call, weights);
  const int rows = static_cast<int>(call.rows);
  if (fused(call, weights)) {  // the decode path: one kernel
    launch_gemv_call<Int4Gemv>(a, rows, call.norm, call.swiglu, s);
    return launched();
  }
  __half* free = static_cast<__half*>(call.scratch);
  const __half* x = a.x;
  if (call.norm) {  // x + skip and its norm first, into the scratch
    skip_norm_rows<<<static_cast<unsigned>(rows), kThreads, 0, s>>>(a, free);
    if (const char* failure = launched()) return failure;
    x = free;
    free += rounded(call.rows * call.k);
  }
  if (gemv_after_norm(call, weights)) {
    if (!aligned(x)) return "LinearInt4: onnxruntime's scratch output is not 16-byte aligned";
    Int4Args normed = a;
    normed.x = x;
    launch_gemv_call<Int4Gemv>(normed, rows, false, call.swiglu, s);
    return launched();
  }
  if (tiled_gemm(call, weights)) {
    if (!aligned(x)) return "LinearInt4: onnxruntime's scratch output is not 16-byte aligned";
    return mma_gemm(call, a, x, reinterpret_cast<float*>(free), s, true, gemm_programmatic);
  }
  __half* out = a.y;
  if (call.swiglu) {
    out = free;
    free += rounded(call.rows * codes_rows(call));
  }
  if (const char* failure = dequantized_gemm(call, a, x, free, out, cublas, s)) return failure;
  if (!call.swiglu) return nullptr;
  return swiglu_cuda(out, a.y, rows, call.n, s);
}

}  // namespace

int64_t linear_int4_scratch_elements(const LinearCall& c, const Int4Weights& w) {
  if (fused(c, w)) return 0;
  // normed rows, then the tensor-core GEMM's split sums ((rows, outputs) floats, one buffer or one
  // a part, where K is split without SwiGLU), or the bands' (rows, 2n) output before SwiGLU and the
  // dequantized band
  if (gemv_after_norm(c, w)) return rounded(c.rows * c.k);
  const int64_t normed = rounded(c.norm ? c.rows * c.k : 0);
  if (tiled_gemm(c, w)) {  // floats: one (rows, outputs) buffer, or one a part (none with SwiGLU)
    const int64_t splits = gemm_plan(c).splits, buffers = split_choice() == Split::kParts ? splits : 1;
    return normed + (splits > 1 && !c.swiglu ? sums_halves(buffers, c.rows, codes_rows(c)) : 0);
  }
  return normed + rounded(c.swiglu ? c.rows * 2 * c.n : 0) + band_rows(c) * c.k;
}

int64_t linear_int4_chain_scratch_elements(const LinearCall& first, const Int4Weights& first_weights,
                                           const LinearCall& call, const Int4Weights& weights) {
  const int64_t h = rounded(first.rows * first.n);
  const int parts = chain_parts(first, first_weights);
  if (parts > 0) {  // K's parts of h (floats), the normed rows, then the second GEMM's scratch
    LinearCall rest = x_in_scratch(call);
    rest.norm = false;
    return rounded(sums_halves(parts, first.rows, first.n)) + h + linear_int4_scratch_elements(rest, weights);
  }
  // h, then the scratch of either call (one after the other)
  return h + std::max(linear_int4_scratch_elements(first, first_weights),
                      linear_int4_scratch_elements(x_in_scratch(call), weights));
}

const char* linear_int4_chain_cuda(const LinearCall& first, const Int4Weights& first_weights, const LinearCall& call,
                                   const Int4Weights& weights, void* stream, void* cublas) {
  if (const char* problem = call_problem(first, first_weights)) return problem;
  if (!aligned(call.scratch)) return "LinearInt4NormLinearInt4: onnxruntime's scratch output is not 16-byte aligned";
  __half* free = static_cast<__half*>(call.scratch);
  const int64_t h = rounded(first.rows * first.n);
  const int parts = chain_parts(first, first_weights);
  if (parts == 0) {  // h in float16 into the scratch, then NormLinearInt4[SwiGLU] of it
    LinearCall head = first;
    head.y = free;
    head.scratch = free + h;
    if (const char* failure = linear_int4_cuda(head, first_weights, stream, cublas)) return failure;
    LinearCall second = call;
    second.x = free;
    second.scratch = free + h;
    return linear_int4_cuda(second, weights, stream, cublas);
  }
  // the first GEMM's K parts into the scratch, added up by the norm's kernel (no conversion kernel),
  // then the second linear of the normed rows
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  float* sums = reinterpret_cast<float*>(free);
  __half* normed = free + rounded(sums_halves(parts, first.rows, first.n));
  const Int4Args a = typed(first, first_weights);
  const bool after_attention = call.swiglu && first.rows <= kFirstAfterAttentionRows;  // o, before gate/up
  if (const char* failure = mma_gemm(first, a, a.x, sums, s, false, kGemmProgrammatic || after_attention)) {
    return failure;
  }
  const PartsNorm norm{typed(call, weights), sums, parts, normed};
  launch_parts_norm(norm, call.rows, s);
  if (const char* failure = launched()) return failure;
  LinearCall rest = call;
  rest.norm = false;
  rest.x = normed;
  rest.scratch = normed + h;
  return linear_int4(rest, weights, s, cublas, kGemmAfterNormProgrammatic);
}

const char* linear_int4_cuda(const LinearCall& call, const Int4Weights& weights, void* stream, void* cublas) {
  return linear_int4(call, weights, static_cast<cudaStream_t>(stream), cublas, kGemmProgrammatic);
}
