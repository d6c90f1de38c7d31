"""Sampling as pure functions: greedy, temperature, top-k, top-p, seeds, penalties, logit bias, logprobs."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.core.errors import InputError
from runtime.penalties import (apply_frequency_presence, apply_logit_bias, apply_repetition_penalty, log_softmax,
                               top_logprobs)
from runtime import sampling
from runtime.sampling import SamplingParams, filter_top_k, filter_top_p, filter_top_p_sorted, sample_next, softmax
from runtime.sequence import Sequence


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


def test_top_p_among_likely_tokens_is_the_sorted_definition(monkeypatch):
    """The nucleus found among the likely tokens equals the whole-vocabulary sort's, with ties
    (by index), top-k cuts and flat rows (the sort itself) among the cases; a peaked row of a
    large vocabulary never sorts it."""
    rng = np.random.default_rng(0)
    for _ in range(1500):
        vocab = int(rng.choice([50, 1000, 49152]))
        x = rng.normal(size=vocab) * rng.choice([0.1, 1, 3, 10, 30])
        if rng.random() < 0.3:
            x = np.round(x, 1)  # ties in the nucleus and at its edge
        if rng.random() < 0.2:
            x = filter_top_k(x, int(rng.integers(1, vocab)))
        p = float(rng.choice([0.1, 0.5, 0.9, 0.95, 0.99, 0.999999]))
        assert np.array_equal(filter_top_p(x, p), filter_top_p_sorted(x, p))
    peaked = rng.normal(size=49152) * 3 / 0.7

    def no_sort(*args):
        raise AssertionError("the whole vocabulary was sorted")

    monkeypatch.setattr(sampling, "filter_top_p_sorted", no_sort)
    assert (~np.isneginf(filter_top_p(peaked, 0.9))).sum() >= 1


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


def test_penalties_against_hand_computed_values():
    logits = np.array([2.0, -1.0, 0.5, 3.0, 0.0])
    assert apply_logit_bias(logits, ((1, 5.0), (4, -100.0))).tolist() == [2.0, 4.0, 0.5, 3.0, -100.0]
    # repetition: positive logits divided, negative multiplied
    assert apply_repetition_penalty(logits, np.array([0, 1]), 2.0).tolist() == [1.0, -2.0, 0.5, 3.0, 0.0]
    # frequency 0.5 x count + presence 0.25 for each token in the output
    out = apply_frequency_presence(logits, np.array([3, 2]), np.array([2.0, 1.0]), 0.5, 0.25)
    assert out.tolist() == [2.0, -1.0, -0.25, 1.75, 0.0]
    assert apply_frequency_presence(logits, np.array([3]), np.array([1.0]), 0.0, 0.0) is logits


def test_sequence_applies_bias_then_penalties_to_prompt_and_output():
    params = SamplingParams(max_new_tokens=8, repetition_penalty=2.0, frequency_penalty=1.0, presence_penalty=0.5,
                            logit_bias=((4, 1.0),))
    seq = Sequence("r", [0], params)
    seq.append(3)
    seq.append(3)
    logits = np.array([2.0, -1.0, 0.5, 3.0, 0.0])
    # bias: token 4 -> 1.0; repetition on {0 (prompt), 3 (output)}: 2 -> 1, 3 -> 1.5;
    # frequency/presence on token 3 (twice): 1.5 - 2 - 0.5 = -1
    assert seq.adjusted(logits).tolist() == [1.0, -1.0, 0.5, -1.0, 1.0]
    assert seq.choose(logits) == 0 and not seq.logprobs  # greedy over the adjusted logits
    assert not seq.greedy_on_device()  # the adjustments need the logits on the host
    assert not Sequence("r", [0], SamplingParams(logprobs=0)).greedy_on_device()
    assert Sequence("r", [0], SamplingParams()).greedy_on_device()


def test_logprobs_are_log_softmax_of_the_raw_logits():
    logits = np.array([1.0, 3.0, 2.0, 3.0])
    lp = log_softmax(logits)
    assert np.exp(lp).sum() == pytest.approx(1.0) and lp[1] - lp[0] == pytest.approx(2.0)
    assert top_logprobs(lp, 3) == [(1, lp[1]), (3, lp[3]), (2, lp[2])]  # ties: lower id first
    seq = Sequence("r", [0], SamplingParams(max_new_tokens=4, logprobs=2, logit_bias=((0, 10.0),)))
    token = seq.choose(logits)
    assert token == 0  # chosen after the bias, reported under the raw logits
    assert seq.logprobs == [(0, pytest.approx(lp[0]), [(1, pytest.approx(lp[1])), (3, pytest.approx(lp[3]))])]


@pytest.mark.parametrize("kwargs", [dict(presence_penalty=2.1), dict(frequency_penalty=-3), dict(repetition_penalty=0),
                                    dict(logit_bias=((1, 200.0),)), dict(logprobs=21)])
def test_bad_adjustments_are_rejected(kwargs):
    with pytest.raises(InputError):
        SamplingParams(**kwargs)


def test_overflowing_logits_still_give_a_distribution():
    """A temperature so small that dividing by it overflows, and +inf logits (a repetition
    penalty near 0 overflowing): a valid distribution, softmax's limit, never NaN."""
    from runtime.penalties import apply_repetition_penalty
    from runtime.sampling import sampling_probs

    logits = np.array([1.0, 3.0, 2.0, -np.inf], np.float32)
    np.testing.assert_array_equal(sampling_probs(logits, SamplingParams(temperature=1e-320)), [0, 1, 0, 0])
    with np.errstate(all="raise"):  # no overflow warnings either
        penalized = apply_repetition_penalty(logits, np.array([0, 2]), 1e-320)  # 1 and 2 -> +inf
        probs = sampling_probs(penalized, SamplingParams(temperature=0.7, top_p=0.5))
    np.testing.assert_array_equal(probs, [0.5, 0, 0.5, 0])
    wide = np.exp(logits.astype(np.float64) / 0.7)  # finite logits: the plain softmax as before
    np.testing.assert_allclose(sampling_probs(logits, SamplingParams(temperature=0.7)), wide / wide.sum(), rtol=1e-12)
