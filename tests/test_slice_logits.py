"""slice-logits: the output projection computes positions [logits_from, S) only."""

from __future__ import annotations

import numpy as np
import pytest

from passes.slice_logits import INPUT
from tests.pass_helpers import apply, captured, counts, feeds, run


@pytest.mark.parametrize("name", ["llama", "qwen2-tied", "gemma3"])
def test_logits_from_selects_positions_and_keeps_their_values(tiny_hf_folders, name):
    model, loaded = captured(tiny_hf_folders[name])
    inputs = feeds(loaded, new=5)
    before = run(model, inputs)["logits"]
    model, reports = apply(model, ["slice-logits"])
    assert reports[0]["changed"] and counts(model)["Slice"] >= 1
    assert INPUT in [v.name for v in model.graph.inputs]
    for start in (0, 4, 5):
        after = run(model, {**inputs, INPUT: np.asarray([start], np.int64)})["logits"]
        assert after.shape == (2, 5 - start, before.shape[-1])
        np.testing.assert_allclose(after, before[:, start:], rtol=1e-5, atol=1e-5)


def test_runs_once_and_says_so(tiny_hf_folders):
    model, _ = captured(tiny_hf_folders["llama"])
    model, reports = apply(model, ["slice-logits", "slice-logits"])
    assert reports[1]["summary"] == "nothing to rewrite" and "already takes" in reports[1]["notes"][0]
