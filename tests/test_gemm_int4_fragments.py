"""runtime/custom_ops/gemm_int4_fragments.h on the CPU: the tensor-core int4 GEMM's (gemm_int4_mma.cuh,
CUDA only) choice of which k each MMA register holds, emulated with g++. A harness builds a warp's
registers for one 64-deep step the way the kernel does (the header's functions), lays them into the
16 x 16 weight and 16 x 8 x matrices the way PTX defines mma.m16n8k16's fragments, multiplies, reads
the results back through the kernel's output mapping, and compares with (code - zero) . x summed
over the step, exactly (small integers); the warpgroup MMA's tile reads each B slot's x from the
shared-memory chunk that holds the same k (wg_x_k). The float16 bits that dequantize the codes are
decoded on the host too."""

from __future__ import annotations

import subprocess

import pytest

from tests.cxx_harness import build

HARNESS = r"""
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include "gemm_int4_fragments.h"
using namespace gemm_int4;

static double half_value(uint32_t h) {  // float16 bits (no inf / nan here)
  const int exponent = (h >> 10) & 31, mantissa = h & 1023;
  const double v = exponent == 0 ? std::ldexp(mantissa, -24) : std::ldexp(1024 + mantissa, exponent - 25);
  return (h >> 15) ? -v : v;
}

int main() {
  std::srand(7);
  int failures = 0, trials = 0, inexact = 0, off_word = 0, wg_off = 0;
  for (int trial = 0; trial < 200; ++trial, ++trials) {
    uint8_t codes[16][32];  // 16 outputs' 64 codes, MatMulNBits' packing (low nibble first)
    int zero[16], x[8][64];
    for (auto& row : codes) for (auto& b : row) b = std::rand() & 0xFF;
    for (int& z : zero) z = trial == 0 ? 8 : std::rand() & 15;
    for (auto& row : x) for (int& v : row) v = std::rand() % 17 - 8;
    auto code = [&](int out, int k) { return (k % 2 == 0 ? codes[out][k / 2] : codes[out][k / 2] >> 4) & 15; };

    double d[16][8] = {};
    for (int m = 0; m < 4; ++m) {
      double a[16][16], b[16][8];
      int seen_a[16][16] = {}, seen_b[16][8] = {};
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        for (int reg = 0; reg < 4; ++reg) {  // the kernel's A registers
          const int out = g + a_output(reg), byte = a_byte(m, reg);
          if (byte / 4 != m / 2) ++off_word;  // the kernel reads MMA m's bytes from word m / 2
          uint32_t word;
          std::memcpy(&word, &codes[out][lane_first_k(t) / 2 + 4 * (byte / 4)], 4);
          const uint32_t bits = code_pair_bits(word, byte % 4), zb = zero_pair_bits(zero[out]);
          const double lo = half_value(bits & 0xFFFF) - half_value(zb & 0xFFFF);
          const double hi = half_value(bits >> 16) - half_value(zb >> 16);
          if (lo != std::floor(lo) || hi != std::floor(hi)) ++inexact;
          // PTX: a0 row g, cols 2t, 2t + 1; a1 row g + 8; a2 and a3 cols 2t + 8, 2t + 9
          const int row = g + 8 * (reg % 2), col = 2 * t + 8 * (reg / 2);
          a[row][col] = lo, a[row][col + 1] = hi;
          ++seen_a[row][col], ++seen_a[row][col + 1];
        }
        for (int reg = 0; reg < 2; ++reg) {  // the kernel's B registers: row g's word x_word
          const int k = lane_first_k(t) + 2 * x_word(m, reg);
          if (wg_x_k(2 * m + reg, t) != k) ++wg_off;  // the warpgroup MMA: chunk 2m + reg's word t
          // PTX: b0 rows 2t, 2t + 1 of column g; b1 rows 2t + 8, 2t + 9
          const int row = 2 * t + 8 * reg;
          b[row][g] = x[g][k], b[row + 1][g] = x[g][k + 1];
          ++seen_b[row][g], ++seen_b[row + 1][g];
        }
      }
      for (int i = 0; i < 16; ++i) for (int j = 0; j < 16; ++j) failures += seen_a[i][j] != 1;
      for (int i = 0; i < 16; ++i) for (int j = 0; j < 8; ++j) failures += seen_b[i][j] != 1;
      for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 8; ++j)
          for (int s = 0; s < 16; ++s) d[i][j] += a[i][s] * b[s][j];
    }
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, t = lane % 4;
      for (int e = 0; e < 4; ++e) {
        // PTX: c0 (row g, column 2t), c1 (g, 2t + 1), c2 (g + 8, 2t), c3 (g + 8, 2t + 1)
        const double value = d[g + 8 * (e / 2)][2 * t + e % 2];
        const int out = g + d_output(e), row = 2 * t + d_row(e);
        double want = 0;
        for (int k = 0; k < 64; ++k) want += (code(out, k) - zero[out]) * x[row][k];
        if (value != want) {
          if (failures < 5) std::printf("mismatch: output %d row %d: %g, want %g\n", out, row, value, want);
          ++failures;
        }
      }
    }
  }
  std::printf("trials %d failures %d inexact %d off_word %d wg_off %d\n", trials, failures, inexact, off_word, wg_off);
}
"""


@pytest.fixture(scope="module")
def harness_output(tmp_path_factory):
    binary = build(tmp_path_factory.mktemp("fragments"), HARNESS, "-std=c++17", "-O1")
    return subprocess.run([str(binary)], text=True, capture_output=True, check=True).stdout


def test_every_k_of_a_step_meets_its_weight_and_x_once_and_the_outputs_land_where_the_kernel_writes(harness_output):
    last = harness_output.strip().splitlines()[-1]
    assert last == "trials 200 failures 0 inexact 0 off_word 0 wg_off 0", harness_output


@pytest.mark.parametrize("zero", [0, 8, 15])
def test_the_code_bits_less_the_zero_bits_are_each_code_less_the_zero_point(tmp_path, zero):
    binary = build(tmp_path, HARNESS.split("int main()")[0] + r"""
int main() {
  for (uint32_t byte = 0; byte < 256; ++byte)
    for (int at = 0; at < 4; ++at) {
      const uint32_t word = (byte << (8 * at)) | (0xA5A5A5A5u & ~(0xFFu << (8 * at)));
      const uint32_t bits = code_pair_bits(word, at), zb = zero_pair_bits(ZERO);
      std::printf("%g %g\n", half_value(bits & 0xFFFF) - half_value(zb & 0xFFFF),
                  half_value(bits >> 16) - half_value(zb >> 16));
    }
}
""", "-std=c++17", f"-DZERO={zero}")
    lines = subprocess.run([str(binary)], text=True, capture_output=True, check=True).stdout.split("\n")
    expected = [f"{(byte & 15) - zero:g} {(byte >> 4) - zero:g}" for byte in range(256) for _ in range(4)]
    assert lines[:-1] == expected
