"""runtime/custom_ops/gemm_int4_mma.cuh's kernel, its own source, run on the CPU: g++ compiles it
against tests/cuda_emulation.h (a block's threads as std::threads, mma.sync from PTX's fragment
layout, cp.async done at once or as late as allowed, a cluster's blocks at once, float16 correctly
rounded) and a harness launches it like gemm_int4_mma::launch does (the same tiles, rows a block and
parts of K; the parts' sums added by atomics and converted after, stored part by part and added by
the conversion, or added in the cluster's shared memory). Each result is compared with the weights
dequantized as the kernel rounds them (float16 (code - zero) x scale) times x, summed in double;
AddressSanitizer watches every read and write of the arrays. The CUDA tests
(tests/test_custom_ops_int4.py) run the same kernel inside onnxruntime on a GPU."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cxx_harness import build

HARNESS = r"""
#include <cstdio>
#include <cstdlib>
#include <random>
#include "cuda_emulation.h"
#include "gemm_int4_mma.cuh"
using cuda_emulation::half_bits;
using cuda_emulation::half_value;

template <int MR, int NO, bool WG = false, int WR = 1, int SUB = 1, bool XREG = false>
void run(const gemm_int4_mma::Args& a, int parts, bool late, bool cluster) {
  using T = gemm_int4_mma::Tile<MR, NO, 4, WG, WR, SUB>;
  const dim3 grid{static_cast<unsigned>((a.n + T::kBN - 1) / T::kBN),
                  static_cast<unsigned>((a.m + T::kBM - 1) / T::kBM), static_cast<unsigned>(parts)};
  cuda_emulation::launch(grid, gemm_int4_mma::kThreads, T::kShared, late,
                         [&] {  // launch_tile's choice: the SwiGLU kernel where a.swiglu
                           if (a.swiglu) gemm_int4_mma::gemm_int4_mma_kernel<MR, NO, 4, WG, WR, true, SUB, XREG>(a);
                           else gemm_int4_mma::gemm_int4_mma_kernel<MR, NO, 4, WG, WR, false, SUB, XREG>(a);
                         }, cluster ? parts : 1);
}

// gemm_int4_mma::launch_rows' tile for `config` (gemm_int4_plan.h's)
template <int MR>
void run_config(const gemm_int4_mma::Args& a, int config, int parts, bool late, bool cluster) {
  if constexpr (MR >= 2) {  // two groups of rows (blocks of 8 rows: config 0's tile)
    if (config == gemm_int4::kRowGroups) return run<MR / 2, 2, false, 2>(a, parts, late, cluster);
  }
  if (config == gemm_int4::kWarpgroup) run<MR, 1, true>(a, parts, late, cluster);
  else if (config == gemm_int4::kWarpgroupStaged) run<MR, 1, true, 1, 1, true>(a, parts, late, cluster);
  else if (gemm_int4::stage_steps(config, a.k) == 2) run<MR, 1, false, 1, 2>(a, parts, late, cluster);
  else if (config == 1) run<MR, 2>(a, parts, late, cluster);
  else run<MR, 1>(a, parts, late, cluster);
}

int main(int argc, char** argv) {
  if (argc != 13) return 2;
  const int m = std::atoi(argv[1]), n = std::atoi(argv[2]), k = std::atoi(argv[3]), block = std::atoi(argv[4]);
  const bool zeros = std::atoi(argv[5]), late = std::atoi(argv[8]);
  const int config = std::atoi(argv[6]);
  const int most_rows = std::atoi(argv[7]), splits = std::atoi(argv[9]);
  const int how = std::atoi(argv[10]);  // K's parts: a gemm_int4_mma::SplitSums value
  const bool swiglu = std::atoi(argv[11]);
  const int outputs = swiglu ? n / 2 : n;
  std::mt19937 rng(m * 7919 + n * 31 + k);
  std::uniform_real_distribution<double> unit(-1, 1), positive(0.01, 0.1);
  const int blocks = k / block, zero_bytes = (blocks + 1) / 2;
  std::vector<uint16_t> x(static_cast<size_t>(m) * k), scales(static_cast<size_t>(n) * blocks);
  std::vector<uint16_t> y(static_cast<size_t>(m) * outputs, 0x7E00);  // NaN: unwritten
  std::vector<uint8_t> codes(static_cast<size_t>(n) * k / 2), zero_points(static_cast<size_t>(n) * zero_bytes);
  for (auto& v : x) v = half_bits(unit(rng));
  for (auto& v : scales) v = half_bits(positive(rng));
  for (auto& v : codes) v = rng() & 0xFF;
  for (auto& v : zero_points) v = rng() & 0xFF;
  const int steps_a_stage = gemm_int4::stage_steps(config, k);
  const int all_parts = gemm_int4::parts_of(k, splits, steps_a_stage);
  std::vector<float> sums(static_cast<size_t>(all_parts) * m * n, 0.f);  // each part's

  gemm_int4_mma::Args a{};
  a.x = reinterpret_cast<const __half*>(x.data());
  a.codes = codes.data();
  a.scales = reinterpret_cast<const __half*>(scales.data());
  a.zeros = zeros ? zero_points.data() : nullptr;
  a.y = reinterpret_cast<__half*>(y.data());
  a.sums = sums.data();
  a.m = m, a.n = n, a.k = k, a.block = block, a.swiglu = swiglu, a.direct_stores = std::atoi(argv[12]);
  if (!gemm_int4::takes(k, block, a.x, a.codes)) return 3;
  a.steps_per_split = gemm_int4::steps_per_split(k, splits, steps_a_stage);
  const int parts = all_parts;  // as launch() does
  using gemm_int4_mma::SplitSums;
  a.adding = static_cast<SplitSums>(how);
  const bool cluster = a.adding == SplitSums::kInCluster && parts > 1 && parts <= gemm_int4::kClusterParts;
  if (a.adding == SplitSums::kInCluster && !cluster) a.adding = SplitSums::kByAtomics;
  if (swiglu && parts > 1 && !cluster) return 4;  // launch() takes one part then
  switch (gemm_int4::block_rows(m, most_rows)) {
    case 8: run_config<1>(a, config, parts, late, cluster); break;
    case 16: run_config<2>(a, config, parts, late, cluster); break;
    case 32: run_config<4>(a, config, parts, late, cluster); break;
    default: run_config<8>(a, config, parts, late, cluster);
  }
  if (parts > 1 && !cluster) {  // the conversion launch() runs after
    const int buffers = a.adding == SplitSums::kInParts ? parts : 1;
    for (size_t i = 0; i < y.size(); ++i) {
      y[i] = half_bits(gemm_int4_mma::parts_total(sums.data(), buffers, y.size(), i));
    }
  }

  auto dot = [&](int r, int o) {  // row r of x . codes row o, the weights rounded as the kernel does
    double sum = 0;
    for (int i = 0; i < k; ++i) {
      const uint8_t byte = codes[(static_cast<size_t>(o) * k + i) / 2];
      const int code = i % 2 ? byte >> 4 : byte & 15, b = i / block;
      const uint8_t zbyte = zero_points[static_cast<size_t>(o) * zero_bytes + b / 2];
      const int zero = zeros ? (b % 2 ? zbyte >> 4 : zbyte & 15) : 8;
      const double w = half_value(half_bits((code - zero) * half_value(scales[static_cast<size_t>(o) * blocks + b])));
      sum += w * half_value(x[static_cast<size_t>(r) * k + i]);
    }
    return sum;
  };
  double worst = 0, largest = 0;
  int unwritten = 0;
  for (int r = 0; r < m; ++r)
    for (int o = 0; o < outputs; ++o) {
      const double gate = dot(r, o), want = swiglu ? gate / (1 + std::exp(-gate)) * dot(r, o + outputs) : gate;
      const uint16_t got = y[static_cast<size_t>(r) * outputs + o];
      if (got == 0x7E00) ++unwritten;
      else worst = std::max(worst, std::fabs(half_value(got) - want));
      largest = std::max(largest, std::fabs(want));
    }
  std::printf("parts %d adding %d worst %.6g largest %.6g unwritten %d\n", parts,
              static_cast<int>(cluster ? SplitSums::kInCluster : a.adding), worst, largest, unwritten);
}
"""

ADDING = {"cluster": 0, "atomics": 1, "parts": 2}  # how K's parts add up: gemm_int4_mma::SplitSums's values
TILES = {"128": 0, "256": 1, "warpgroup": 2, "row-groups": 3, "paired-steps": 4,  # gemm_int4_plan.h's configurations
         "warpgroup-staged": 5}
CASES = {  # m, n (codes rows), k, block, zero points, TILES, most rows a block, splits of K, ADDING,
    # SwiGLU (n / 2 outputs: silu(gate) * up, the gates first)
    "8-rows-odd-n-zeros": (6, 201, 256, 32, True, "128", 64, 1, "atomics", False),
    "16-rows-split-atomics": (10, 40, 512, 128, True, "128", 64, 3, "atomics", False),
    "16-rows-split-cluster": (10, 40, 512, 128, True, "128", 64, 3, "cluster", False),
    "16-rows-split-parts": (10, 40, 512, 128, True, "128", 64, 3, "parts", False),
    "32-rows-wide-split-atomics": (21, 300, 512, 64, False, "256", 64, 3, "atomics", False),
    "32-rows-wide-split-cluster": (21, 300, 512, 64, False, "256", 64, 3, "cluster", False),
    "64-rows": (64, 130, 192, 64, True, "128", 64, 1, "atomics", False),
    "64-rows-wide": (64, 260, 128, 32, False, "256", 64, 1, "atomics", False),
    "64-rows-eight-parts-cluster": (64, 130, 512, 32, True, "128", 64, 8, "cluster", False),
    "64-rows-eight-parts-stored": (64, 130, 512, 32, True, "128", 64, 8, "parts", False),
    "64-rows-sixteen-parts-stored": (64, 132, 1024, 32, False, "128", 64, 16, "parts", False),
    "three-row-blocks-cluster": (130, 64, 128, 32, True, "128", 64, 2, "cluster", False),
    "three-row-blocks-stored": (130, 64, 128, 32, False, "128", 64, 2, "parts", False),
    "blocks-of-at-most-16": (40, 128, 128, 64, False, "128", 16, 1, "atomics", False),
    "partial-last-tile-float16": (20, 132, 128, 64, True, "128", 64, 1, "atomics", False),
    "partial-last-tile-stored": (64, 196, 256, 32, False, "128", 64, 2, "parts", False),
    "swiglu-odd-outputs": (6, 2 * 101, 256, 32, True, "128", 64, 1, "atomics", True),
    "swiglu-wide-cluster": (21, 2 * 300, 512, 64, False, "256", 64, 4, "cluster", True),
    "swiglu-64-rows": (64, 2 * 64, 128, 32, True, "128", 64, 1, "atomics", True),
    # two groups of rows: 8 rows a block (config 0's tile), 16 to 64, rows past m in the second group,
    # K's parts stored, in a cluster, by atomics; SwiGLU
    "row-groups-8-rows-odd-n-zeros": (6, 201, 256, 32, True, "row-groups", 64, 1, "atomics", False),
    "row-groups-16-rows-split-parts": (10, 40, 512, 128, True, "row-groups", 64, 3, "parts", False),
    "row-groups-32-rows-split-cluster": (21, 300, 512, 64, False, "row-groups", 64, 3, "cluster", False),
    "row-groups-64-rows-eight-parts-stored": (64, 130, 512, 32, True, "row-groups", 64, 8, "parts", False),
    "row-groups-40-rows-atomics": (40, 200, 256, 32, False, "row-groups", 64, 2, "atomics", False),
    "row-groups-three-row-blocks-stored": (130, 64, 128, 32, False, "row-groups", 64, 2, "parts", False),
    "row-groups-swiglu-64-rows-cluster": (64, 2 * 130, 256, 32, True, "row-groups", 64, 2, "cluster", True),
    # two steps of K a stage: 8 to 64 rows a block, K's parts (an even count of steps each, the last
    # part shorter) stored, in a cluster, by atomics; SwiGLU; K of an odd count of steps (config 0's
    # tile then)
    "paired-8-rows-odd-n-zeros": (6, 201, 256, 32, True, "paired-steps", 64, 1, "atomics", False),
    "paired-16-rows-split-parts": (10, 40, 640, 128, True, "paired-steps", 64, 4, "parts", False),
    "paired-32-rows-split-cluster": (21, 300, 512, 64, False, "paired-steps", 64, 2, "cluster", False),
    "paired-64-rows-eight-parts-stored": (64, 130, 1024, 32, True, "paired-steps", 64, 8, "parts", False),
    "paired-three-row-blocks-atomics": (130, 64, 384, 32, False, "paired-steps", 64, 2, "atomics", False),
    "paired-swiglu-64-rows-cluster": (64, 2 * 130, 512, 32, True, "paired-steps", 64, 2, "cluster", True),
    "paired-odd-steps": (64, 130, 192, 64, True, "paired-steps", 64, 1, "atomics", False),
}
# The warpgroup MMA's cases, for each of its two tiles (x copied by cp.async, and x staged through registers:
# LinearInt4's tile from 32 rows on an H100 / H200), x stored in the A registers' k order: 8 to 64 rows a block, 130
# rows (the third block's rows past m zero-filled), blocks of 32 and 128, K's parts stored, in a cluster, by atomics;
# SwiGLU
WARPGROUP_CASES = {
    "8-rows-odd-n-zeros": (6, 201, 256, 32, True, 64, 1, "atomics", False),
    "16-rows-split-parts": (10, 40, 512, 128, True, 64, 3, "parts", False),
    "32-rows-split-cluster": (21, 300, 512, 64, False, 64, 3, "cluster", False),
    "64-rows-eight-parts-stored": (64, 130, 512, 32, True, 64, 8, "parts", False),
    "three-row-blocks-atomics": (130, 64, 128, 32, False, 64, 2, "atomics", False),
    "swiglu-64-rows": (64, 2 * 64, 128, 32, True, 64, 1, "atomics", True)}
CASES.update({f"{tile}-{name}": (*case[:5], tile, *case[5:])
              for tile in ("warpgroup", "warpgroup-staged") for name, case in WARPGROUP_CASES.items()})


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    # AddressSanitizer: a read or write outside x, the codes, the scales or y fails the case
    return build(tmp_path_factory.mktemp("emulated"), HARNESS, "-std=c++20", "-O1", "-pthread", "-fno-strict-aliasing",
                 "-fsanitize=address")


# each thread storing its own sums one by one (Args::direct_stores), not through store_tile
DIRECT = {"8-rows-odd-n-zeros", "16-rows-split-parts", "64-rows-eight-parts-stored", "three-row-blocks-stored"}


@pytest.mark.parametrize("late", [False, True], ids=["copies-at-once", "copies-late"])
@pytest.mark.parametrize("case", [*CASES.values(), *(CASES[c] + (True,) for c in sorted(DIRECT))],
                         ids=[*CASES, *(f"{c}-direct-stores" for c in sorted(DIRECT))])
def test_the_int4_gemm_kernel_run_on_the_cpu_equals_the_dequantized_product(harness, case, late):
    m, n, k, block, zeros, tile, most_rows, splits, sums, swiglu, *direct = case
    args = [m, n, k, block, int(zeros), TILES[tile], most_rows, int(late), splits, ADDING[sums], int(swiglu),
            int(bool(direct and direct[0]))]
    done = subprocess.run([str(harness), *map(str, args)], text=True, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    fields = done.stdout.split()
    parts, adding, worst, largest = int(fields[1]), int(fields[3]), float(fields[5]), float(fields[7])
    unwritten = int(fields[9])
    unit = 2 if tile == "paired-steps" and k // 64 % 2 == 0 else 1  # gemm_int4::stage_steps
    per_part = -(-(k // 64) // min(splits, k // 64))
    per_part = -(-per_part // unit) * unit
    assert parts == -(-(k // 64) // per_part) and unwritten == 0
    assert adding == ADDING["atomics" if sums == "cluster" and parts == 1 else sums]  # a cluster only where K is split
    # float16 output (half an ulp: 2^-11 relative) and fp32 sums of float16 products
    assert worst <= largest * 2 ** -10 + 1e-3, done.stdout
