"""runtime/custom_ops/gemm_int4_plan.h on the CPU: how the LinearInt4 family's tensor-core GEMM
(gemm_int4_mma.cuh, CUDA only) cuts a call, compiled with g++ into a small
harness: the rows a block, the shapes it takes, and the parts K is split into (about `fill`
blocks, never an empty part, none where the outputs alone fill the GPU; with two steps of K a stage,
an even count of steps a part where K's steps pair up)."""

from __future__ import annotations

import subprocess

import pytest

from tests.cxx_harness import build

HARNESS = r"""
#include <cstdio>
#include "gemm_int4_plan.h"
int main() {
  int m, n, k, config, fill;
  while (std::scanf("%d %d %d %d %d", &m, &n, &k, &config, &fill) == 5) {
    const int splits = gemm_int4::splits_for(m, n, k, config, fill), unit = gemm_int4::stage_steps(config, k);
    const int capped = gemm_int4::splits_for(m, n, k, config, fill, 64, gemm_int4::kClusterParts);
    std::printf("%d %d %d %d %d %d\n", splits, gemm_int4::steps_per_split(k, splits, unit), gemm_int4::block_rows(m),
                capped, gemm_int4::parts_of(k, capped, unit), unit);
  }
  static const char codes[64] = {};
  using gemm_int4::takes;
  std::printf("%d %d %d %d %d %d %d\n", takes(2048, 32, codes, codes), takes(2048, 128, codes, codes),
              takes(576, 32, codes, codes), takes(2080, 32, codes, codes), takes(2048, 96, codes, codes),
              takes(2048, 32, codes + 8, codes), takes(64, 128, codes, codes));
}
"""

SHAPES = [(64, 2048, 2048), (16, 3072, 2048), (64, 2048, 8192), (64, 128256, 2048), (64, 64, 64), (5, 64, 2048),
          (256, 16384, 2048), (64, 4096, 14336), (33, 600, 192), (1000, 2048, 2048)]


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    binary = build(tmp_path_factory.mktemp("plan"), HARNESS)
    queries = [(m, n, k, config, fill) for m, n, k in SHAPES for config in (0, 1, 2, 3, 4) for fill in (132, 264)]
    out = subprocess.run([str(binary)], input="\n".join(" ".join(map(str, q)) for q in queries), text=True,
                         capture_output=True, check=True).stdout.split("\n")
    answers = dict(zip(queries, [tuple(map(int, line.split())) for line in out]))
    return answers, tuple(map(int, out[len(queries)].split()))


def test_k_is_cut_into_whole_steps_so_that_the_grid_fills_the_gpu(plan):
    answers, _ = plan
    for (m, n, k, config, fill), (splits, per_part, rows, capped, capped_parts, unit) in answers.items():
        outputs = 256 if config == 1 else 128  # 2: the warpgroup MMA's tile; 3: two groups of rows; 4: paired steps
        assert rows == (8 if m <= 8 else 16 if m <= 16 else 32 if m <= 32 else 64)
        tiles = -(-m // rows) * -(-n // outputs)
        steps = k // 64
        assert unit == (2 if config == 4 and steps % 2 == 0 else 1)  # steps a stage
        assert 1 <= splits <= steps and (splits - 1) * per_part < steps <= splits * per_part  # none empty
        assert per_part % unit == 0
        if tiles >= fill:
            assert splits == 1, (m, n, k)
        else:  # the parts the grid wanted, as even as whole steps (of a stage) allow
            wanted = min(steps, -(-fill // tiles))
            assert per_part == -(-(-(-steps // wanted)) // unit) * unit and splits <= wanted
        # at most a cluster's 8 parts (LinearInt4's ask), the same split where it needs no more
        assert capped <= 8 and capped_parts == capped and (capped == splits or splits > 8)


def test_the_gemm_takes_k_in_steps_of_64_and_of_whole_power_of_two_blocks_and_aligned_data(plan):
    _, takes = plan
    # 2048/32, 2048/128, 576/32 yes; K = 2080, a block of 96, x off by 8, a block wider than K no
    assert takes == (1, 1, 1, 0, 0, 0, 0)
