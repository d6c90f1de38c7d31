"""benchmarks/gpu_int4_gemm_probe.py on the CPU: how it cuts K (the GPU session only compiles and
times the probe): about FILL blocks for small outputs, never more parts than K has steps, no cut
where the outputs alone fill the GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_int4_gemm_probe as probe  # noqa: E402


@pytest.mark.parametrize("m,n,k", [(64, 2048, 2048), (16, 3072, 2048), (64, 2048, 8192), (64, 128256, 2048),
                                   (64, 64, 64), (1, 64, 2048)])
def test_k_is_cut_so_that_the_grid_fills_the_gpu(m, n, k):
    splits = probe.splits_for(m, n, k)
    tiles = -(-m // probe.TILE) * -(-n // probe.TILE)
    assert 1 <= splits <= k // probe.BLOCK
    if tiles >= probe.FILL:
        assert splits == 1
    elif splits < k // probe.BLOCK:
        assert tiles * splits >= probe.FILL > tiles * (splits - 1)
