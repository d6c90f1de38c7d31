"""fuse-rms-norm: every RMSNorm becomes one RMSNormalization (opset 23), same outputs."""

from __future__ import annotations

import pytest

from tests.pass_helpers import apply, assert_same_outputs, captured, counts, feeds, run


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_rms_norms_fused(name, tiny_hf_folders):
    model, loaded = captured(tiny_hf_folders[name])
    inputs = feeds(loaded)
    before = run(model, inputs)
    n_pow = counts(model)["Pow"]
    model, [report] = apply(model, ["fuse-rms-norm"])
    c = counts(model)
    assert report["changed"] and c["RMSNormalization"] == n_pow > 0
    assert c["Pow"] == c["Sqrt"] == c["Reciprocal"] == c["ReduceMean"] == 0
    assert model.opset_imports[""] == 23
    assert_same_outputs(before, run(model, inputs))


def test_fp16_engine_keeps_fp32_norm_compute(tiny_hf_folders):
    model, loaded = captured(tiny_hf_folders["llama"], "fp16")
    model, [report] = apply(model, ["fuse-rms-norm"])
    assert report["changed"]
    for node in model.graph:
        if node.op_type == "RMSNormalization":
            assert node.inputs[0].producer().op_type == "Cast"  # normalized in fp32
