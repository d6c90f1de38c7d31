"""Perplexity's arithmetic: the NLL of a window computed in row chunks equals one pass."""

from __future__ import annotations

import numpy as np

from optimizer.evaluate import window_nll


def test_chunked_nll_equals_one_pass_bit_for_bit():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((97, 1000)) * 4).astype(np.float32)
    ids = rng.integers(0, 1000, 97)
    whole = window_nll(logits, ids, rows=10_000)
    assert whole[1] == 96
    for rows in (1, 7, 32, 96):
        assert window_nll(logits, ids, rows=rows) == whole
    x = logits[:-1].astype(np.float64)  # the definition, directly
    lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    assert np.isclose(whole[0], (lse - x[np.arange(96), ids[1:]]).sum(), rtol=1e-12)
