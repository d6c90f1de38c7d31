"""Speculative decoding (runtime.speculative): the drafting and rejection math, the engine loop
with a fake model (greedy tokens as alone, rollback after rejections, aborts and preemption
leaving the pools clean, sampled tokens following the target distribution), then real tiny
engines (static and concat layouts, prompt lookup and a draft engine)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer.core.errors import InputError
from runtime.kv_cache import BlockPool, SlotPool
from runtime.llm_engine import LLMEngine
from runtime.sampling import SamplingParams, accept_or_resample, residual, softmax
from runtime.speculative import Draft, NgramDrafter, SpeculativeConfig, ngram_draft
from tests.test_scheduler import EOS, VOCAB, FakeExecutor, alone, fake_next, one_hot


# -- the math ------------------------------------------------------------------------------------
def test_ngram_draft_copies_what_followed_the_latest_match():
    assert ngram_draft([5, 6, 7, 8, 1, 5, 6], 3) == [7, 8, 1]
    assert ngram_draft([9, 5, 6, 1, 2, 4, 5, 6, 3, 3, 5, 6], 2) == [3, 3]  # the latest of two matches
    assert ngram_draft([1, 2, 3, 1, 2, 4, 2], 2, max_n=2) == [4, 2]  # n = 2 fails, n = 1 finds "2"
    assert ngram_draft([1, 2, 3, 2, 3], 4) == [2, 3, 2, 3]  # a pattern continues periodically
    assert ngram_draft([1, 2, 3, 4], 3) == [] and ngram_draft([7], 3) == []
    assert ngram_draft([1, 2, 3, 1, 2, 4, 2], 2, max_n=3, min_n=2) == []


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    keep = expected > 0
    if counts[~keep].sum() > 0:  # an outcome of probability 0 was drawn
        return math.inf
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


# chi-square 0.999 quantiles by degrees of freedom (scipy.stats.chi2.ppf(0.999, df))
CHI2_999 = {3: 16.27, 4: 18.47, 5: 20.52, 7: 24.32, 26: 54.05, 63: 103.4}


@pytest.mark.parametrize("point_mass", [False, True])
def test_rejection_rule_gives_the_target_distribution(point_mass):
    rng = np.random.default_rng(1)
    p = np.asarray([0.05, 0.4, 0.1, 0.3, 0.15, 0.0])
    q = np.asarray([0.3, 0.05, 0.3, 0.05, 0.1, 0.2])  # a poor draft, even on a token p excludes
    counts = np.zeros(6)
    accepted = 0
    n = 20000
    for _ in range(n):
        draft = 3 if point_mass else int(rng.choice(6, p=q))  # a point mass: always the same guess
        token = accept_or_resample(p, draft, None if point_mass else q, rng)
        counts[token] += 1
        accepted += token == draft
    assert chi_square(counts, p) < CHI2_999[4]
    # the sanity case: the drafts themselves (what a broken rule that keeps them would emit) fail it
    naive = np.bincount(np.full(n, 3) if point_mass else rng.choice(6, size=n, p=q), minlength=6)
    assert chi_square(naive, p) > 10 * CHI2_999[4]
    expected_acceptance = p[3] if point_mass else np.minimum(p, q).sum()
    assert abs(accepted / n - expected_acceptance) < 0.02


def test_residual_removes_the_draft_or_the_drafts_mass():
    p = np.asarray([0.5, 0.3, 0.2])
    assert residual(p, None, 1).tolist() == [0.5, 0.0, 0.2]
    assert np.allclose(residual(p, np.asarray([0.2, 0.6, 0.2]), 1), [0.3, 0.0, 0.0])


def test_config_refuses_bad_values():
    with pytest.raises(InputError, match="unknown speculative method"):
        SpeculativeConfig("medusa")
    with pytest.raises(InputError, match=">= 1"):
        SpeculativeConfig("ngram", 0)
    with pytest.raises(InputError, match="--draft"):
        SpeculativeConfig("draft", 4)


# -- the engine loop with a fake model -------------------------------------------------------------
class FakeSpecExecutor(FakeExecutor):
    """The scheduler tests' fake model with verification: every position's logits of the last
    token and its drafts, which enter the cache; `rollback` truncates it again."""

    def __init__(self, pool, logits_fn=None) -> None:
        super().__init__(pool)
        self.logits_fn = logits_fn or (lambda ids: one_hot(fake_next(ids)))
        self.verified = 0

    def prefill(self, seq, start, end):
        super().prefill(seq, start, end)
        return self.logits_fn(self.cache[seq.request_id])

    def decode(self, seqs):
        super().decode(seqs)
        return np.stack([self.logits_fn(self.cache[s.request_id]) for s in seqs])

    def enable_speculation(self, num_tokens: int):
        return None

    def verify(self, seqs, drafts):
        out = []
        for seq, draft in zip(seqs, drafts):
            cached = self.cache.setdefault(seq.request_id, [])
            assert len(cached) == seq.num_tokens - 1, "verification does not continue the cache"
            self._check_held(seq, seq.num_tokens + len(draft))
            rows = []
            for token in [seq.last_token, *draft]:
                cached.append(token)
                rows.append(self.logits_fn(cached))
            out.append(np.stack(rows))
            self.verified += 1
        return out

    def rollback(self, seq, length: int) -> None:
        cached = self.cache[seq.request_id]
        assert length <= len(cached)
        del cached[length:]


class NoisyOracle:
    """Drafts the fake model's true next tokens, with some replaced by wrong ones (a rejection
    and a rollback each time), deterministically from the sequence's tokens."""

    def propose(self, seqs, ks):
        drafts = []
        for seq, k in zip(seqs, ks):
            ids, tokens = list(seq.all_ids), []
            for j in range(k):
                token = fake_next(ids)
                if (sum(ids) + j) % 4 == 0:
                    token = (token + 1) % VOCAB
                tokens.append(token)
                ids.append(token)
            drafts.append(Draft(tokens))
        return drafts

    def release(self, seq) -> None:
        pass


requests = st.lists(
    st.tuples(st.lists(st.integers(1, VOCAB - 1), min_size=1, max_size=30),  # prompt
              st.integers(1, 24),  # max_new_tokens
              st.integers(0, 8),  # arrival step
              st.one_of(st.none(), st.integers(0, 30)),  # abort at step (None: never)
              st.booleans()),  # ignore_eos
    min_size=1, max_size=10)


def drive_spec(pool, reqs, k: int, drafter, max_running: int = 3, chunk: int = 8):
    executor = FakeSpecExecutor(pool)
    engine = LLMEngine(executor, eos_token_ids=[EOS], max_running=max_running, prefill_chunk=chunk,
                       speculative=SpeculativeConfig("ngram", k, max_batch=max_running), drafter=drafter)
    seqs, aborted = {}, set()
    for step in itertools.count():
        for i, (prompt, n, arrival, abort_at, ignore_eos) in enumerate(reqs):
            if arrival == step:
                seqs[i] = engine.add_request(prompt, SamplingParams(max_new_tokens=n, ignore_eos=ignore_eos),
                                             detokenize=False)
            if abort_at == step and i in seqs and not seqs[i].finished:
                engine.abort(seqs[i].request_id)
                aborted.add(i)
        if step > max(r[2] for r in reqs) and not engine.has_work:
            break
        engine.step()
        pool.check()
        assert step < 2000, "the engine stopped making progress"
    assert not pool.holders() and not executor.cache and not engine.sequences
    for i, seq in seqs.items():
        prompt, n, _, _, ignore_eos = reqs[i]
        want = alone(prompt, SamplingParams(max_new_tokens=n, ignore_eos=ignore_eos))
        if i in aborted and seq.finish_reason == "abort":
            assert seq.output_ids == want[:len(seq.output_ids)]
        else:
            assert seq.output_ids == want
    return engine, executor


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=requests, k=st.integers(1, 5), blocks=st.booleans(), oracle=st.booleans())
def test_speculation_serves_every_request_as_alone(reqs, k, blocks, oracle):
    """Greedy tokens as alone, through rejections, aborts and (block pools) preemption."""
    pool = BlockPool(num_blocks=14, block_size=4) if blocks else SlotPool(3, capacity=64)
    drive_spec(pool, reqs, k, NoisyOracle() if oracle else NgramDrafter(max_n=3, min_n=1))


def test_rejections_roll_back_and_preemption_happens_mid_speculation():
    reqs = [([1, 2, 3, 4, 5, 6, 7], 20, 0, None, True) for _ in range(3)]
    pool = BlockPool(num_blocks=12, block_size=4)
    engine, executor = drive_spec(pool, reqs, 4, NoisyOracle())
    assert engine.scheduler.preemptions > 0 and executor.verified > 0
    assert 0 < engine.total_accepted_tokens < engine.total_drafted_tokens  # some rejected, rolled back
    assert engine.total_decode_tokens > engine.total_decode_rows  # more than one token per step


# a small vocabulary whose logits depend on the whole context: the target, and a different draft
SMALL_VOCAB = 4


def table_logits(seed: int):
    def logits(ids):
        rng = np.random.default_rng([seed, *ids[-3:], len(ids) % 5])
        return (rng.normal(size=SMALL_VOCAB) * 1.5).astype(np.float32)
    return logits


class SampledDrafter:
    """Draws drafts from another small model's distribution q (returned for the rule)."""

    def __init__(self, logits_fn, params: SamplingParams) -> None:
        self.logits_fn, self.params = logits_fn, params

    def propose(self, seqs, ks):
        drafts = []
        for seq, k in zip(seqs, ks):
            ids, tokens, qs = list(seq.all_ids), [], []
            for _ in range(k):
                q = softmax(self.logits_fn(ids).astype(np.float64) / self.params.temperature)
                token = int(seq.rng.choice(SMALL_VOCAB, p=q))
                tokens.append(token)
                qs.append(q)
                ids.append(token)
            drafts.append(Draft(tokens, np.stack(qs) if qs else None))
        return drafts

    def release(self, seq) -> None:
        pass


def first_tokens_counts(drafter_for, n: int, length: int = 3, temperature: float = 1.0) -> tuple[np.ndarray, int]:
    target = table_logits(0)
    params = [SamplingParams(max_new_tokens=length, temperature=temperature, seed=i, ignore_eos=True)
              for i in range(n)]
    executor = FakeSpecExecutor(SlotPool(8, capacity=16), target)
    engine = LLMEngine(executor, max_running=8, speculative=SpeculativeConfig("ngram", length - 1, max_batch=8),
                       drafter=drafter_for(params[0]))
    seqs = engine.run([engine.make_sequence([1, 2], p, f"r{i}", detokenize=False) for i, p in enumerate(params)])
    counts = np.zeros(SMALL_VOCAB ** length)
    for s in seqs:
        counts[int(np.ravel_multi_index(s.output_ids, (SMALL_VOCAB,) * length))] += 1
    return counts, engine.total_accepted_tokens


def exact_sequence_probs(length: int = 3, temperature: float = 1.0) -> np.ndarray:
    target = table_logits(0)
    probs = np.zeros(SMALL_VOCAB ** length)
    for tokens in itertools.product(range(SMALL_VOCAB), repeat=length):
        ids, prob = [1, 2], 1.0
        for t in tokens:
            prob *= softmax(target(ids).astype(np.float64) / temperature)[t]
            ids.append(t)
        probs[int(np.ravel_multi_index(tokens, (SMALL_VOCAB,) * length))] = prob
    return probs


@pytest.mark.parametrize("drafts", ["sampled draft model", "point masses"])
def test_sampled_output_follows_the_target_distribution(drafts, monkeypatch):
    """3 sampled tokens of 3000 requests (64 outcomes): chi-square against the target's exact
    joint distribution; the same test fails when rejected drafts are kept."""
    if drafts == "point masses":
        make = lambda params: NgramDrafter(max_n=1, min_n=1)  # noqa: E731 - prompt lookup on a 4-token vocabulary
    else:
        make = lambda params: SampledDrafter(table_logits(7), params)  # noqa: E731
    probs = exact_sequence_probs()
    counts, accepted = first_tokens_counts(make, 3000)
    assert accepted > 300  # verification really kept drafts
    assert chi_square(counts, probs) < CHI2_999[63]
    monkeypatch.setattr("runtime.sequence.accept_or_resample", lambda p, draft, q, rng: draft)
    broken, _ = first_tokens_counts(make, 3000)
    assert chi_square(broken, probs) > 2 * CHI2_999[63]


def test_no_drafts_above_the_batch_limit():
    executor = FakeSpecExecutor(SlotPool(4, capacity=64))
    engine = LLMEngine(executor, max_running=4, speculative=SpeculativeConfig("ngram", 3, max_batch=2),
                       drafter=NoisyOracle())
    seqs = [engine.make_sequence([1, 2, 3], SamplingParams(max_new_tokens=12, ignore_eos=True), f"r{i}",
                                 detokenize=False) for i in range(3)]
    engine.run(seqs)
    assert engine.total_drafted_tokens == 0 and executor.verified == 0  # three decode together: no drafts
    engine.run([engine.make_sequence([1, 2, 3], SamplingParams(max_new_tokens=12, ignore_eos=True), "alone",
                                     detokenize=False)])
    assert engine.total_drafted_tokens > 0


def test_executors_without_verification_are_refused():
    class Paged(FakeExecutor):
        pass

    with pytest.raises(InputError, match="paged KV-cache layout"):
        LLMEngine(Paged(BlockPool(4, 4)), speculative=SpeculativeConfig("ngram", 2))
