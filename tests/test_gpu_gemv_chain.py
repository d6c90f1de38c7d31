"""benchmarks/gpu_gemv_chain.py on the CPU: how a variant's sources are made (the GPU session only
compiles and times them): the tree's kernels, a candidate linear.cu, constants set in whichever
file defines them, environment variables; unknown variants and constants refused."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_gemv_chain as chain  # noqa: E402

CANDIDATE = Path(chain.__file__).parent / "cuda" / "linear_pdl.cu"


def constant(text: str, name: str) -> str:
    return re.search(rf"constexpr [\w ]+ {name} = ([^;]+);", text).group(1)


def test_now_is_a_copy_of_the_trees_kernels(tmp_path):
    sources, env = chain.variant_sources("now", tmp_path)
    assert env == {}
    for name in ("linear.cu", "linear_int4.cu", "linear_common.cuh", "cuda_kernels.h", "swiglu.cu"):
        assert (sources / name).read_text() == (chain.OPS / name).read_text()
    assert chain.variant_sources("now", tmp_path)[0] == sources  # the same text, the same folder


def test_a_candidate_with_constants_and_environment(tmp_path):
    sources, env = chain.variant_sources(f"file={CANDIDATE}:kPreload=4:kTargetWarps=4096:env.OPTIMIZER_CUDA_PDL=0",
                                         tmp_path)
    assert env == {"OPTIMIZER_CUDA_PDL": "0"}
    linear = (sources / "linear.cu").read_text()
    assert "griddepcontrol.wait" in linear and constant(linear, "kPreload") == "4"
    assert constant((sources / "linear_common.cuh").read_text(), "kTargetWarps") == "4096"  # where it is defined
    assert (sources / "linear_int4.cu").read_text() == (chain.OPS / "linear_int4.cu").read_text()
    assert chain.variant_sources(f"file={CANDIDATE}", tmp_path)[0] != sources


def test_every_variant_compiles_the_chains_entry_points_against_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.setattr("runtime.custom_ops.find_nvcc", lambda: "/usr/local/cuda/bin/nvcc")
    sources, _ = chain.variant_sources("now:kCodes=64", tmp_path)
    command = chain.compile_command(sources, tmp_path / "chain.so")
    assert command[0] == "/usr/local/cuda/bin/nvcc" and f"-I{sources}" in command
    assert [Path(c).name for c in command if c.endswith(".cu")] == ["linear.cu", "swiglu.cu", "linear_int4.cu",
                                                                     "linear_chain.cu"]
    assert constant((sources / "linear_int4.cu").read_text(), "kCodes") == "64"


@pytest.mark.parametrize("variant,message", [
    ("tree", "unknown variant"),
    ("now:kNope=1", "the constant kNope is in none"),
])
def test_unknown_variants_and_constants_are_refused(tmp_path, variant, message):
    with pytest.raises(SystemExit, match=message):
        chain.variant_sources(variant, tmp_path)
