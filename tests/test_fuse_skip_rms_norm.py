"""fuse-skip-rms-norm: residual Add + RMSNormalization -> SkipSimplifiedLayerNormalization."""

from __future__ import annotations

import pytest

from tests.pass_helpers import apply, assert_same_outputs, captured, counts, feeds, run


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_residual_adds_fused(name, tiny_hf_folders):
    model, loaded = captured(tiny_hf_folders[name])
    model, _ = apply(model, ["fuse-rms-norm"])
    inputs = feeds(loaded)
    before = run(model, inputs)
    norms = counts(model)["RMSNormalization"]
    model, [report] = apply(model, ["fuse-skip-rms-norm"])
    skip = counts(model)["com.microsoft::SkipSimplifiedLayerNormalization"]
    # every norm after a residual Add: all but the first layer's input norm (and Gemma's
    # sandwich norms, whose inputs come from attention / MLP, not from an Add)
    assert report["changed"] and skip > 0
    assert counts(model)["RMSNormalization"] == norms - skip
    assert_same_outputs(before, run(model, inputs))


def test_nothing_to_rewrite_without_fused_norms(tiny_hf_folders):
    model, _ = captured(tiny_hf_folders["llama"])
    model, [report] = apply(model, ["fuse-skip-rms-norm"])
    assert not report["changed"] and report["summary"] == "nothing to rewrite"
