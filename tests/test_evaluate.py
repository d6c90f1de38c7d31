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


# Fast paths (optimize eval): each compared with the reference arithmetic above, bit for bit.

import math  # noqa: E402

import pytest  # noqa: E402

from optimizer.evaluate import WindowScorer, perplexity, position_nll, session_logits_fn  # noqa: E402


def _logits(rows: int, vocab: int, seed: int, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, vocab)) * 4
    x[::5] += 300.0  # rows far from zero: the max shift matters
    x[1::7] *= 40.0  # peaked rows: exp underflows for most of the vocabulary
    return x.astype(dtype)


def _reference_positions(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """window_nll's per-position values in one pass (its definition)."""
    x = logits[:-1].astype(np.float64)
    m = x.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[:, 0]
    return lse - x[np.arange(len(x)), ids[1:]]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("block", [1, 3, 16, 200])
def test_position_nll_gives_window_nll_values_bit_for_bit(dtype, block):
    logits = _logits(97, 1000, 1, dtype)
    ids = np.random.default_rng(2).integers(0, 1000, 97)
    out = np.full(96, np.nan)
    position_nll(logits[:-1], ids[1:], out, np.empty((block, 1000)))
    assert np.array_equal(out, _reference_positions(logits, ids))
    assert float(out.sum()) == window_nll(logits, ids)[0]


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_window_scorer_equals_window_nll_bit_for_bit(threads):
    with WindowScorer(threads) as score:
        for seed, (rows, vocab) in enumerate([(97, 1000), (513, 4099), (2, 7), (65, 1000)]):
            logits = _logits(rows, vocab, seed)
            ids = np.random.default_rng(seed + 10).integers(0, vocab, rows)
            assert score(logits, ids) == window_nll(logits, ids)


def test_window_scorer_is_not_float32_arithmetic():
    """Guards the float64 definition: a float32 log-softmax differs in the low digits, and the
    exact sum (math.fsum of float64 values computed independently, per position) agrees."""
    logits = _logits(257, 3001, 5)
    ids = np.random.default_rng(6).integers(0, 3001, 257)
    with WindowScorer(2) as score:
        total, n = score(logits, ids)
    exact = math.fsum(float(np.logaddexp.reduce(row.astype(np.float64))) - float(row[t])
                      for row, t in zip(logits[:-1], ids[1:]))
    assert n == 256 and abs(total - exact) <= 1e-12 * abs(exact)
    x = logits[:-1]
    f32 = float((np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
                 - x[np.arange(256), ids[1:]]).sum())
    assert f32 != total


@pytest.mark.parametrize("batch", [1, 2, 3, 7])
def test_batched_perplexity_equals_the_window_by_window_reference(batch):
    rng = np.random.default_rng(3)
    windows = rng.integers(0, 500, (7, 33))
    table = _logits(500, 500, 4)
    buffer = np.empty((7, 33, 500), np.float32)

    def logits_fn(ids):  # like session_logits_fn: a reused buffer, each row depending on its tokens
        out = buffer[:len(ids)]
        out[:] = table[ids] + np.cumsum(ids, axis=1)[..., None] * 1e-3
        return out
    total = count = 0
    for w in windows:  # the reference: the loop perplexity() ran before batching
        nll, n = window_nll(logits_fn(w[None])[0].copy(), w)
        total, count = total + nll, count + n
    ticks = []
    got = perplexity(logits_fn, windows, on_window=lambda: ticks.append(1), batch=batch, threads=2)
    assert got["perplexity"] == float(np.exp(total / count)) and got["mean_nll"] == total / count
    assert got["tokens_evaluated"] == count == 7 * 32 and len(ticks) == 7


@pytest.fixture(scope="module", params=["static", "concat"])
def tiny_engine(request, tmp_path_factory):
    from optimizer.pipeline import BuildOptions, build_engine
    from runtime import Engine

    out = tmp_path_factory.mktemp("eval") / request.param
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-llama", kv_layout=request.param,
                              quiet=True))
    return Engine.load(out, huge_pages=False)


def test_batched_window_logits_equal_the_probe_path(tiny_engine):
    """One bound run for a batch of windows gives each window the logits the per-window
    prefill (runtime.executors.probe_logits, the path perplexity took before) gives it."""
    from runtime.executors import probe_logits

    session = tiny_engine.session
    windows = np.random.default_rng(0).integers(0, 200, (3, 24))
    fn = session_logits_fn(session)
    for batch in (1, 3):
        got = fn(windows[:batch])
        assert got.shape == (batch, 24, session.logits_type()[1])
        for w, logits in zip(windows, got):
            np.testing.assert_array_equal(logits, probe_logits(session, w.tolist(), len(w)))
    reference = [window_nll(probe_logits(session, w.tolist(), len(w)), w) for w in windows]
    total = sum(r[0] for r in reference)  # the same left-to-right order as perplexity()
    for batch in (1, 2, 3):
        assert perplexity(fn, windows, batch=batch)["mean_nll"] == total / (3 * 23)
