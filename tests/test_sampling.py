"""Sampling as pure functions: greedy, temperature, top-k, top-p, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.core.errors import InputError
from runtime.sampling import SamplingParams, filter_top_k, filter_top_p, sample_next, softmax


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, 2.9, -1.0])
    assert sample_next(logits, SamplingParams(), np.random.default_rng(0)) == 1


def test_top_k_keeps_k_largest():
    out = filter_top_k(np.array([1.0, 5.0, 3.0, 4.0]), 2)
    assert np.isneginf(out[[0, 2]]).all() and (out[[1, 3]] == [5.0, 4.0]).all()
    assert (filter_top_k(np.array([1.0, 2.0]), 0) == [1.0, 2.0]).all()


def test_top_p_keeps_smallest_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    kept = ~np.isneginf(filter_top_p(logits, 0.79))
    assert kept.tolist() == [True, True, False, False]  # 0.5 + 0.3 reaches 0.79
    kept = ~np.isneginf(filter_top_p(logits, 0.81))
    assert kept.tolist() == [True, True, True, False]
    kept = ~np.isneginf(filter_top_p(logits, 0.1))
    assert kept.tolist() == [True, False, False, False]  # the top token always stays


def test_seeded_sampling_is_reproducible_and_follows_distribution():
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    params = SamplingParams(temperature=1.0, seed=7)
    draws = [sample_next(logits, params, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(draws)) == 1
    rng = np.random.default_rng(0)
    counts = np.bincount([sample_next(logits, params, rng) for _ in range(4000)], minlength=3) / 4000
    assert np.allclose(counts, [0.6, 0.3, 0.1], atol=0.03)


def test_low_temperature_sharpens():
    probs = softmax(np.array([1.0, 2.0]) / 0.1)
    assert probs[1] > 0.99


@pytest.mark.parametrize("kwargs", [dict(max_new_tokens=0), dict(temperature=-1), dict(top_k=-1),
                                    dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_parameters_are_rejected(kwargs):
    with pytest.raises(InputError):
        SamplingParams(**kwargs)
