"""fuse-attention: the attention subgraph with its rotary embedding becomes one
GroupQueryAttention per layer, for every architecture (GQA, sliding windows, QK-norm), with
the same logits and caches on prefill and decode steps."""

from __future__ import annotations

import numpy as np
import pytest

from passes.fuse_attention import rotary_caches
from tests.conftest import TINY_MODELS
from tests.pass_helpers import apply, assert_same_outputs, captured, counts, feeds, run

PRE = ["fuse-rms-norm"]


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
@pytest.mark.parametrize("past,new", [(0, 6), (5, 1), (4, 3)])
def test_attention_fused_same_outputs(name, past, new, tiny_hf_folders):
    model, loaded = captured(tiny_hf_folders[name])
    model, _ = apply(model, PRE)
    batch = 1 if past and new > 1 else 2  # GQA: a multi-token step after a past needs batch 1
    inputs = feeds(loaded, batch=batch, past=past, new=new)
    before = run(model, inputs)
    model, [report] = apply(model, ["fuse-attention"])
    c = counts(model)
    layers = loaded.config.num_hidden_layers
    assert report["changed"] and c["com.microsoft::GroupQueryAttention"] == layers
    for gone in ("Softmax", "Where", "Neg", "Sin", "Cos"):
        assert c[gone] == 0, gone
    assert_same_outputs(before, run(model, inputs))


def test_sliding_window_and_softcap_attributes(tiny_hf_folders):
    model, loaded = captured(tiny_hf_folders["mistral-sliding"])
    model, _ = apply(model, PRE + ["fuse-attention"])
    windows = {n.attributes["local_window_size"].value for n in model.graph if n.op_type == "GroupQueryAttention"}
    assert windows == {loaded.config.sliding_window}


def test_gemma_qk_norm_kept_before_rotary(tiny_hf_folders):
    model, _ = captured(tiny_hf_folders["gemma3"])
    model, _ = apply(model, PRE + ["fuse-attention"])
    for node in model.graph:
        if node.op_type == "GroupQueryAttention":
            q_src = node.inputs[0].producer()
            assert q_src.op_type == "Reshape"
            assert q_src.inputs[0].producer().op_type == "RMSNormalization"


def test_qk_norm_needs_fused_norms_first(tiny_hf_folders):
    model, _ = captured(tiny_hf_folders["gemma3"])
    model, [report] = apply(model, ["fuse-attention"])
    assert not report["changed"]
    assert any("run fuse-rms-norm before fuse-attention" in note for note in report["notes"])


def test_rotary_caches_match_angles():
    inv_freq = 1.0 / (10000 ** (np.arange(0, 8, 2) / 8))
    cos, sin = rotary_caches(inv_freq, 1.0, 16)
    assert cos.shape == (16, 4)
    np.testing.assert_allclose(cos[5], np.cos(5 * inv_freq), atol=1e-6)
    np.testing.assert_allclose(sin[7], np.sin(7 * inv_freq), atol=1e-6)
