"""runtime/custom_ops/int4_bands.h on the CPU: how LinearInt4's prefill path (dequantized bands
multiplied by cuBLAS, CUDA only) cuts a weight's codes rows into bands, compiled with g++ into a
small harness: every band fits the scratch's band, and where there is more than one, each starts
at a multiple of 128 rows (its GEMM's output columns 16-byte aligned)."""

from __future__ import annotations

import subprocess

import pytest

from tests.cxx_harness import build

HARNESS = r"""
#include <cstdio>
#include "int4_bands.h"
int main() {
  long long rows, k, values;
  while (std::scanf("%lld %lld %lld", &rows, &k, &values) == 3) {
    std::printf("%lld\n", static_cast<long long>(int4_bands::band_rows(rows, k, values)));
  }
  std::printf("%lld %lld\n", static_cast<long long>(int4_bands::kBandValues),
              static_cast<long long>(int4_bands::band_rows(4096, 14336)));
}
"""

BAND = 16 << 20
# (codes rows, K): the Llama-3.2-1B and 3.1-8B linears (gate/up as its 2n codes rows), odd sizes
SHAPES = [(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192), (128256, 2048), (6144, 4096), (4096, 4096),
          (28672, 4096), (4096, 14336), (128256, 4096), (100, 64), (1, 8), (5000, 200000), (50, 300000)]


@pytest.fixture(scope="module")
def bands(tmp_path_factory):
    binary = build(tmp_path_factory.mktemp("bands"), HARNESS)
    queries = [(rows, k, values) for rows, k in SHAPES for values in (BAND, 1 << 20)]
    out = subprocess.run([str(binary)], input="\n".join(" ".join(map(str, q)) for q in queries), text=True,
                         capture_output=True, check=True).stdout.split("\n")
    return dict(zip(queries, map(int, out))), tuple(map(int, out[len(queries)].split()))


def test_a_band_is_the_whole_weight_where_it_fits_else_whole_tiles_of_rows(bands):
    answers, _ = bands
    for (rows, k, values), band in answers.items():
        if rows * k <= values:
            assert band == rows, (rows, k, values)
            continue
        assert 1 <= band <= rows, (rows, k, values, band)
        assert band % 128 == 0 or band == rows, (rows, k, values, band)  # several bands: whole tiles
        assert band * k <= values or band <= 128, (rows, k, values, band)  # fits, or one tile past it
        assert band == rows or band * k > values - 128 * k, (rows, k, values, band)  # no more whole tiles fit


def test_the_8b_down_projection_takes_aligned_bands(bands):
    _, (band_values, down) = bands
    assert band_values == BAND
    assert down == 1152  # not 1170: the second band's outputs start at column 1152, 2304 bytes in
