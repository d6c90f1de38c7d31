// A tensor-core GEMM with 4-bit weights read straight into the MMA's registers, for the LinearInt4
// family's calls of more rows than its GEMV takes: y (M, N) = x (M, K) . w^T, x float16
// row-major, w in onnxruntime MatMulNBits' layout (cuda_kernels.h's Int4Weights: row n's codes
// contiguous along K, two a byte, the low nibble first), fp32 sums.
//
// mma.sync m16n8k16 sums over its 16 k in any order, so each thread's k are chosen to be codes it
// can read at once: lane (g, t) (g = lane / 4, t = lane % 4) holds, for output g of an 8-wide
// fragment, the 16 codes [16t, 16t + 16) of a 64-deep step (one 8-byte read; inside one
// quantization block), two 32-bit words of eight. A word's codes (j, j + 4) come out as one half2
// (the nibbles or'ed into 1024.0's bits, less 1024 + zero point, times the scale): the step's
// four k16 MMAs take pairs (0, 1) and (2, 3) of word 0, then of word 1. The x fragment pairs the
// same k: for word w, the row's eight float16 values [16t + 8w, +8) (one 16-byte read) permuted
// into (0, 4), (1, 5) and (2, 6), (3, 7).
//
// A block: 8 warps side by side along the outputs, each over all of the block's BM = 16 MF rows
// (MF 16-row fragments, so that each weight is dequantized once a block) and NF 8-wide
// fragments of outputs: BN = 64 NF outputs. K in 64-deep steps
// through a STAGES-deep cp.async pipeline of the x tile and the raw codes (shared memory holds
// 4 bits a weight); each weight's scale and zero point read a step ahead into registers. K may
// be split over gridDim.z: each part adds into a zeroed fp32 buffer, converted to float16 after.
// gemm_int4_plan.h has the host's choices (tiles, rows a block, splits).
//
// Included by linear_int4.cu and by benchmarks/cuda/gemm_int4_probe.cu (device code, nvcc).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "gemm_int4_plan.h"

namespace gemm_int4_mma {

using gemm_int4::kStepK;
constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kLdX = kStepK + 8;    // the x tile's row stride in halves (conflict-free 16-byte reads)
constexpr int kStepBytes = kStepK / 2;  // a row's codes a step

struct Args {
  const __half* x;
  const uint8_t* codes;
  const __half* scales;
  const uint8_t* zeros;  // null: 8
  __half* y;             // (m, n)
  float* sums;           // (m, n) zeroed, with more than one part of K
  int m;
  int n;
  int k;
  int block;  // K values a scale covers, a multiple of 32
  int steps_per_split;
};

template <int MF, int NF, int STAGES>
struct Tile {
  static constexpr int kBM = 16 * MF;
  static constexpr int kBN = 8 * kWarps * NF;
  static constexpr int kStageX = kBM * kLdX * 2;     // bytes
  static constexpr int kStageW = kBN * kStepBytes;   // bytes
  static constexpr size_t kShared = static_cast<size_t>(STAGES) * (kStageX + kStageW);
};

__device__ __forceinline__ void copy_async(void* shared, const void* global, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(global), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void commit_async() { asm volatile("cp.async.commit_group;\n" ::); }
template <int PENDING>
__device__ __forceinline__ void wait_async() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING));
}

// A thread's 16-byte pieces of one matrix's tile in a stage: where each comes from at the part's
// first step, its byte offset in the stage (-1: the thread has no such piece), and whether it lies
// inside the matrix (outside: zero-filled).
template <int N>
struct Pieces {
  const unsigned char* from[N];
  int to[N];
  bool valid[N];

  // Each piece of step `offset` bytes on into the stage at `stage`.
  __device__ __forceinline__ void copy(unsigned char* stage, size_t offset) const {
#pragma unroll
    for (int p = 0; p < N; ++p) {
      if (to[p] >= 0) copy_async(stage + to[p], from[p] + offset, valid[p]);
    }
  }
};

// The pieces of a tile of `tile_rows` rows of `per_row` pieces, its first row `row0` of a matrix
// of `rows` rows `row_bytes` apart from `base`; `first_bytes` into each row; in the stage rows
// `shared_row_bytes` apart. Thread t takes pieces t, t + kThreads, ...
template <int N>
__device__ __forceinline__ void plan_pieces(const unsigned char* base, size_t row_bytes, int row0, int rows,
                                            int tile_rows, int per_row, int shared_row_bytes, size_t first_bytes,
                                            Pieces<N>& pieces) {
#pragma unroll
  for (int p = 0; p < N; ++p) {
    const int piece = threadIdx.x + p * kThreads, r = piece / per_row, c = (piece % per_row) * 16;
    const bool mine = piece < tile_rows * per_row;
    pieces.valid[p] = mine && row0 + r < rows;
    pieces.from[p] = base + (pieces.valid[p] ? row0 + r : 0) * row_bytes + first_bytes + c;
    pieces.to[p] = mine ? r * shared_row_bytes + c : -1;
  }
}

__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Codes (j, j + 4) of `word` as (code - zero) * scale, one half2 (`offset`: 1024 + zero).
__device__ __forceinline__ uint32_t weight_pair(uint32_t word, int j, __half2 offset, __half2 scale) {
  const uint32_t bits = ((word >> (4 * j)) & 0x000F000Fu) | 0x64006400u;
  const __half2 w = __hmul2(__hsub2(*reinterpret_cast<const __half2*>(&bits), offset), scale);
  return *reinterpret_cast<const uint32_t*>(&w);
}

// What dequantizes a row's codes at one step: scale and 1024 + zero point, both halves.
struct Dequant {
  __half2 scale;
  __half2 offset;
};

// Where a thread finds its outputs' scales and zero points: row (first output) and the strides,
// hoisted out of the loop (a block index is a shift: the block is a power of two).
struct DequantRows {
  const __half* scales;   // the first output's row of scales
  const uint8_t* zeros;   // its row of packed zero points, or null
  int scale_stride;       // 8 outputs on: scales
  int zero_stride;        // and zero-point bytes
  int shift;              // log2(block)
  int live;               // outputs (of the thread's NF) inside n: fragments [0, live)
};

// A row's scale and packed zero-point byte for one step, as loaded; converted where used. The
// loads are volatile asm so that they stay where they are issued, a step before their use (left
// to itself the compiler sinks them next to it, and every step waits on memory).
struct RawDequant {
  uint16_t scale;  // float16 bits
  uint16_t zeros;  // the byte holding the block's zero point (0x88 without: 8)
};

__device__ __forceinline__ uint16_t load_u16(const void* p) {
  uint16_t v;
  asm volatile("ld.global.nc.u16 %0, [%1];\n" : "=h"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ uint16_t load_u8(const void* p) {
  uint16_t v;
  asm volatile("ld.global.nc.u8 %0, [%1];\n" : "=h"(v) : "l"(p));
  return v;
}

__device__ __forceinline__ RawDequant load_dequant(const DequantRows& d, int j, int b) {
  if (j >= d.live) return {0, 0x88};  // scale 0
  const uint16_t scale = load_u16(d.scales + j * d.scale_stride + b);
  return {scale, d.zeros == nullptr ? uint16_t{0x88} : load_u8(d.zeros + j * d.zero_stride + b / 2)};
}

// Block b's scale and 1024 + zero point (0x6400 | zero: exactly), both halves.
__device__ __forceinline__ Dequant dequant_of(const RawDequant& r, int b) {
  const uint16_t zero = (b % 2 == 0 ? r.zeros : r.zeros >> 4) & 0xF;
  const __half offset = __ushort_as_half(static_cast<uint16_t>(0x6400 | zero));
  return {__half2half2(__ushort_as_half(r.scale)), __half2half2(offset)};
}

template <int MF, int NF, int STAGES>
__global__ void __launch_bounds__(kThreads, 1) gemm_int4_mma_kernel(Args a) {
  using T = Tile<MF, NF, STAGES>;
  extern __shared__ __align__(128) unsigned char shared[];
  unsigned char* xs = shared;                       // STAGES x (BM, kLdX) halves
  unsigned char* ws = shared + STAGES * T::kStageX;  // STAGES x (BN, kStepBytes) codes
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int n0 = blockIdx.x * T::kBN, m0 = blockIdx.y * T::kBM;
  const int first = blockIdx.z * a.steps_per_split;
  const int count = min(a.k / kStepK, first + a.steps_per_split) - first;

  // the thread's pieces of the x tile and of the codes tile, then step `i` of this part into
  // `stage` (a commit group either way, so that the waits count steps)
  Pieces<(T::kBM * 8 + kThreads - 1) / kThreads> x_pieces;
  plan_pieces(reinterpret_cast<const unsigned char*>(a.x), 2L * a.k, m0, a.m, T::kBM, 8, kLdX * 2,
              2L * first * kStepK, x_pieces);
  Pieces<(T::kBN * 2 + kThreads - 1) / kThreads> w_pieces;
  plan_pieces(a.codes, a.k / 2, n0, a.n, T::kBN, 2, kStepBytes, static_cast<size_t>(first) * kStepBytes, w_pieces);
  auto load_stage = [&](int i, int stage) {
    if (i < count) {
      x_pieces.copy(xs + stage * T::kStageX, static_cast<size_t>(i) * kStepK * 2);
      w_pieces.copy(ws + stage * T::kStageW, static_cast<size_t>(i) * kStepBytes);
    }
    commit_async();
  };

  const int out_row = warp * NF * 8 + g;  // the thread's output in fragment j: + 8 j
  DequantRows rows;
  {
    const int blocks = a.k / a.block, row = min(n0 + out_row, a.n - 1);
    rows.scales = a.scales + static_cast<size_t>(row) * blocks;
    rows.zeros = a.zeros == nullptr ? nullptr : a.zeros + static_cast<size_t>(row) * ((blocks + 1) / 2);
    rows.scale_stride = 8 * blocks;
    rows.zero_stride = 8 * ((blocks + 1) / 2);
    rows.shift = __ffs(a.block) - 1;
    rows.live = n0 + out_row >= a.n ? 0 : min(NF, (a.n - 1 - n0 - out_row) / 8 + 1);
  }
  RawDequant next[NF];  // step i + 1's, loaded during step i
  auto block_of = [&](int i) { return ((first + i) * kStepK + 16 * t) >> rows.shift; };
  auto load_next = [&](int i) {
#pragma unroll
    for (int j = 0; j < NF; ++j) next[j] = load_dequant(rows, j, block_of(i));
  };

  float acc[MF][NF][4];
#pragma unroll
  for (int f = 0; f < MF; ++f)
#pragma unroll
    for (int j = 0; j < NF; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[f][j][e] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) load_stage(s, s);
  if (count > 0) load_next(0);

  for (int i = 0; i < count; ++i) {
    wait_async<STAGES - 2>();
    __syncthreads();  // step i is in; every warp is done with step i - 1's stage
    load_stage(i + STAGES - 1, (i + STAGES - 1) % STAGES);
    Dequant cur[NF];
#pragma unroll
    for (int j = 0; j < NF; ++j) cur[j] = dequant_of(next[j], block_of(i));
    if (i + 1 < count) load_next(i + 1);

    const int stage = i % STAGES;
    const __half* xt = reinterpret_cast<const __half*>(xs + stage * T::kStageX);
    const unsigned char* wt = ws + stage * T::kStageW;
    uint2 codes[NF];
#pragma unroll
    for (int j = 0; j < NF; ++j) {
      codes[j] = *reinterpret_cast<const uint2*>(wt + (out_row + 8 * j) * kStepBytes + 8 * t);
    }
#pragma unroll
    for (int w = 0; w < 2; ++w) {
      uint4 xv[MF][2];  // rows g and g + 8 of each fragment: values [16t + 8w, +8)
#pragma unroll
      for (int f = 0; f < MF; ++f)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = f * 16 + g + 8 * h;
          xv[f][h] = *reinterpret_cast<const uint4*>(xt + r * kLdX + 16 * t + 8 * w);
        }
#pragma unroll
      for (int p = 0; p < 4; p += 2) {  // pairs (0, 1), then (2, 3)
        uint32_t af[MF][4];
#pragma unroll
        for (int f = 0; f < MF; ++f) {
          // (x_p, x_p+4) and (x_p+1, x_p+5) of rows g and g + 8
          const uint32_t lo0 = p == 0 ? xv[f][0].x : xv[f][0].y, hi0 = p == 0 ? xv[f][0].z : xv[f][0].w;
          const uint32_t lo1 = p == 0 ? xv[f][1].x : xv[f][1].y, hi1 = p == 0 ? xv[f][1].z : xv[f][1].w;
          af[f][0] = __byte_perm(lo0, hi0, 0x5410);
          af[f][1] = __byte_perm(lo1, hi1, 0x5410);
          af[f][2] = __byte_perm(lo0, hi0, 0x7632);
          af[f][3] = __byte_perm(lo1, hi1, 0x7632);
        }
#pragma unroll
        for (int j = 0; j < NF; ++j) {
          const uint32_t word = w == 0 ? codes[j].x : codes[j].y;
          const uint32_t b0 = weight_pair(word, p, cur[j].offset, cur[j].scale);
          const uint32_t b1 = weight_pair(word, p + 1, cur[j].offset, cur[j].scale);
#pragma unroll
          for (int f = 0; f < MF; ++f) mma(acc[f][j], af[f], b0, b1);
        }
      }
    }
  }

#pragma unroll
  for (int f = 0; f < MF; ++f)
#pragma unroll
    for (int j = 0; j < NF; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = m0 + f * 16 + g + 8 * h;
        const int col = n0 + warp * NF * 8 + 8 * j + 2 * t;
        if (row >= a.m) continue;
        const size_t at = static_cast<size_t>(row) * a.n + col;
        const float v0 = acc[f][j][2 * h], v1 = acc[f][j][2 * h + 1];
        if (gridDim.z > 1) {
          if (col < a.n) atomicAdd(a.sums + at, v0);
          if (col + 1 < a.n) atomicAdd(a.sums + at + 1, v1);
        } else if (col + 1 < a.n && a.n % 2 == 0) {
          *reinterpret_cast<__half2*>(a.y + at) = __floats2half2_rn(v0, v1);
        } else {
          if (col < a.n) a.y[at] = __float2half(v0);
          if (col + 1 < a.n) a.y[at + 1] = __float2half(v1);
        }
      }
}

__global__ void sums_to_half(const float* in, __half* out, int64_t count) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) out[i] = __float2half(in[i]);
}

template <int MF, int NF, int STAGES>
const char* launch_tile(const Args& a, int splits, cudaStream_t s) {
  using T = Tile<MF, NF, STAGES>;
  auto kernel = gemm_int4_mma_kernel<MF, NF, STAGES>;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(T::kShared)) !=
      cudaSuccess) {
    return "GEMM int4: the device refused the tile's shared memory";
  }
  const dim3 grid((a.n + T::kBN - 1) / T::kBN, (a.m + T::kBM - 1) / T::kBM, splits);
  kernel<<<grid, kThreads, T::kShared, s>>>(a);
  return nullptr;
}

// y = x . w^T with `config`'s tile for blocks of block_rows(m, most_rows) rows (gemm_int4_plan.h),
// K cut into `splits` parts (splits_for's); with more than one, `a.sums` holds m * n floats
// (zeroed here).
template <int STAGES>
const char* launch(Args a, int config, int splits, cudaStream_t s, int most_rows = 64) {
  if (!gemm_int4::takes(a.k, a.block, a.x, a.codes) || config < 0 || config >= gemm_int4::kConfigs) {
    return "GEMM int4: K must be a multiple of 64, the block a power of two from 32, x and the codes 16-byte aligned";
  }
  a.steps_per_split = gemm_int4::steps_per_split(a.k, splits);
  splits = (a.k / kStepK + a.steps_per_split - 1) / a.steps_per_split;  // no empty part
  const size_t count = static_cast<size_t>(a.m) * a.n;
  if (splits > 1 && cudaMemsetAsync(a.sums, 0, count * sizeof(float), s) != cudaSuccess) {
    return "GEMM int4: clearing the split sums failed";
  }
  // a warp over all of a block's rows (its weights dequantized once a block); 128 or 256 outputs
  const bool wide = config == 1;
  const char* failure = nullptr;
  switch (gemm_int4::block_rows(a.m, most_rows)) {
    case 16:
      failure = wide ? launch_tile<1, 4, STAGES>(a, splits, s) : launch_tile<1, 2, STAGES>(a, splits, s);
      break;
    case 32:
      failure = wide ? launch_tile<2, 4, STAGES>(a, splits, s) : launch_tile<2, 2, STAGES>(a, splits, s);
      break;
    default:
      failure = wide ? launch_tile<4, 4, STAGES>(a, splits, s) : launch_tile<4, 2, STAGES>(a, splits, s);
  }
  if (failure != nullptr) return failure;
  if (splits > 1) sums_to_half<<<static_cast<unsigned>((count + 255) / 256), 256, 0, s>>>(a.sums, a.y, count);
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace gemm_int4_mma
