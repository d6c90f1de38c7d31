// Which k each register of gemm_int4_mma.cuh's MMA fragments holds, and the bits that turn a byte of
// two 4-bit codes into two float16 values. Host and device: tests/test_gemm_int4_plan.py emulates a
// warp's four m16n8k16 MMAs of a step with these functions on the CPU (g++) and checks that every k
// of the step is summed once, x and the weight at the same k.
//
// The kernel's MMAs multiply 16 outputs' weights (A, 16 x 16) by 8 rows of x (B, 16 x 8). mma.sync
// m16n8k16 sums over its 16 k in any order, so the kernel chooses which k each slot holds. Lane
// (g, t) (g = lane / 4, t = lane % 4) holds, for outputs g and g + 8, the 16 codes [16t, 16t + 16)
// of a 64-deep step: 8 bytes each, byte q the codes 16t + 2q (low nibble) and + 1. MMA m (0-3) of
// the step takes byte 2m for its slots 2t, 2t + 1 (k = 16t + 4m, + 1) and byte 2m + 1 for slots
// 2t + 8, 2t + 9 (k = 16t + 4m + 2, + 3). x then needs no reordering: of row g's 16 values
// [16t, 16t + 16) (eight 32-bit words, as read), b0 is word 2m and b1 word 2m + 1.
#pragma once
#include <stdint.h>

#if defined(__CUDACC__)
#define GEMM_INT4_HD __host__ __device__ __forceinline__
#else
#define GEMM_INT4_HD inline
#endif

namespace gemm_int4 {

constexpr int kLaneCodes = 16;  // codes a lane holds a step, for each of its outputs

// The first k of lane t's codes in a step.
GEMM_INT4_HD int lane_first_k(int t) { return kLaneCodes * t; }

// The byte of the lane's 8 that MMA `mma` takes for its slots 2t, 2t + 1 (`half` 0) or 2t + 8,
// 2t + 9 (1).
GEMM_INT4_HD int code_byte(int mma, int half) { return 2 * mma + half; }

// A register `reg` (0-3) of MMA `mma`: output g + a_output(reg)'s byte a_byte(mma, reg), as
// code_pair_bits makes it (a0, a1: slots 2t, 2t + 1 of outputs g, g + 8; a2, a3: slots 2t + 8, + 9).
GEMM_INT4_HD int a_output(int reg) { return 8 * (reg % 2); }
GEMM_INT4_HD int a_byte(int mma, int reg) { return code_byte(mma, reg / 2); }

// B register `reg` (0-1) of MMA `mma`: the word of row g's eight (its values [16t, 16t + 16)).
GEMM_INT4_HD int x_word(int mma, int reg) { return 2 * mma + reg; }

// D register `e` (0-3): output g + d_output(e), row 2t + d_row(e).
GEMM_INT4_HD int d_output(int e) { return 8 * (e / 2); }
GEMM_INT4_HD int d_row(int e) { return e % 2; }

// The warpgroup MMA (gemm_int4_mma.cuh's kWarpgroup tile) holds A as mma.sync does (a lane's codes
// of the step [16t, 16t + 16), MMA m's slots as above) and reads B, x, from shared memory in 8-k
// chunks (a row's 16 bytes each): so x is stored in that order, 4 bytes (two k) at a time. Chunk q
// (0-7) of a step holds in its word t (0-3) each row's k wg_x_k(q, t) and + 1: MMA m takes chunk 2m
// (slots 0-7: word t at slots 2t, 2t + 1, as A's byte 2m) and chunk 2m + 1 (slots 8-15, byte 2m + 1).
GEMM_INT4_HD int wg_x_k(int chunk, int word) { return lane_first_k(word) + 2 * chunk; }

// Byte `byte` (0-3) of `word` as two float16 in one register: the low nibble c0 as 1024 + c0 (low
// half: 0x6400 | c0), the high nibble c1 as 64 + c1 (high half: 0x5400, whose last mantissa bit is
// 1/16, | c1 << 4). Exact; less zero_pair_bits' two values, each half is the code less the zero point.
// On the GPU one byte permute and one mask.
constexpr uint32_t kCodeMagic = 0x54006400u;
constexpr uint32_t kCodeMask = 0xFFF0FF0Fu;  // the low nibble in the low half, the high one in the high half

// PTX's prmt (CUDA's __byte_perm): byte i of the result is byte (selector >> 4i) & 7 of (b, a).
GEMM_INT4_HD uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t selector) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(a, b, selector);
#else
  const uint64_t bytes = (static_cast<uint64_t>(b) << 32) | a;
  uint32_t out = 0;
  for (int i = 0; i < 4; ++i) {
    out |= static_cast<uint32_t>((bytes >> (8 * ((selector >> (4 * i)) & 7))) & 0xFFu) << (8 * i);
  }
  return out;
#endif
}

// `magic`: kCodeMagic (a kernel passes it from a register, so that the permute's selector can be
// the instruction's constant instead of a register rebuilt for each byte).
GEMM_INT4_HD uint32_t code_pair_bits(uint32_t word, int byte, uint32_t magic = kCodeMagic) {
  // bytes: the codes, 0x64, the codes, 0x54; then the mask
  return byte_perm(word, magic, 0x7050u | (0x0101u * byte)) & kCodeMask;
}

// The float16 pair code_pair_bits' halves are less: 1024 + zero and 64 + zero.
GEMM_INT4_HD uint32_t zero_pair_bits(uint32_t zero) {
  return (0x6400u | zero) | ((0x5400u | (zero << 4)) << 16);
}

}  // namespace gemm_int4
