"""benchmarks/gpu_gemv_chain.py on the CPU: how a variant's sources are made (the GPU session only
compiles and times them): the tree's kernels, another linear.cu, constants set in whichever file
defines them, environment variables; unknown variants and constants refused."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _kernel_variants as variants  # noqa: E402
import gpu_gemv_chain as chain  # noqa: E402

def constant(text: str, name: str) -> str:
    return re.search(rf"constexpr [\w ]+ {name} = ([^;]+);", text).group(1)


def test_now_is_a_copy_of_the_trees_kernels(tmp_path):
    sources, env = variants.variant_sources("now", tmp_path)
    assert env == {}
    for name in ("linear.cu", "linear_int4.cu", "linear_common.cuh", "cuda_kernels.h", "swiglu.cu"):
        assert (sources / name).read_text() == (variants.OPS / name).read_text()
    assert variants.variant_sources("now", tmp_path)[0] == sources  # the same text, the same folder


def test_constants_and_environment(tmp_path):
    sources, env = variants.variant_sources("now:kProgrammatic=true:kPreload=4:kTargetWarps=4096:env.OPTIMIZER_CUDA_PDL=0",
                                         tmp_path)
    assert env == {"OPTIMIZER_CUDA_PDL": "0"}
    linear = (sources / "linear.cu").read_text()
    assert constant(linear, "kProgrammatic") == "true" and constant(linear, "kPreload") == "4"
    assert constant((variants.OPS / "linear.cu").read_text(), "kProgrammatic") == "false"  # the tree as it was
    assert constant((sources / "linear_common.cuh").read_text(), "kTargetWarps") == "4096"  # where it is defined
    assert constant((sources / "linear_int4.cu").read_text(), "kProgrammatic") == "true"  # both families
    assert variants.variant_sources("now", tmp_path)[0] != sources


def test_another_linear_cu(tmp_path):
    other = tmp_path / "other.cu"
    other.write_text("// another linear.cu\nconstexpr int kPreload = 0;\n")
    sources, _ = variants.variant_sources(f"file={other}:kPreload=3", tmp_path)
    assert (sources / "linear.cu").read_text() == "// another linear.cu\nconstexpr int kPreload = 3;\n"
    assert (sources / "linear_int4.cu").read_text() == (variants.OPS / "linear_int4.cu").read_text()


def test_every_variant_compiles_the_chains_entry_points_against_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.setattr("runtime.custom_ops.find_nvcc", lambda: "/usr/local/cuda/bin/nvcc")
    sources, _ = variants.variant_sources("now:kCodes=64", tmp_path)
    command = chain.compile_command(sources, tmp_path / "chain.so")
    assert command[0] == "/usr/local/cuda/bin/nvcc" and f"-I{sources}" in command
    assert [Path(c).name for c in command if c.endswith(".cu")] == ["linear.cu", "swiglu.cu", "linear_int4.cu",
                                                                     "attention.cu", "linear_chain.cu",
                                                                     "attention_entry.cu"]
    assert all(Path(c).exists() for c in command if c.endswith(".cu"))
    assert constant((sources / "linear_int4.cu").read_text(), "kCodes") == "64"


@pytest.mark.parametrize("variant,message", [
    ("tree", "unknown variant"),
    ("now:kNope=1", "no constant kNope in linear.cu, linear_int4.cu, linear_common.cuh, attention.cu"),
])
def test_unknown_variants_and_constants_are_refused(tmp_path, variant, message):
    with pytest.raises(SystemExit, match=message):
        variants.variant_sources(variant, tmp_path)
