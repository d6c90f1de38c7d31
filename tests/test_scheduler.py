"""Property tests of the scheduler and cache pools with a fake model (hypothesis).

The fake executor keeps, per sequence, the tokens "in its cache" and checks that every
prefill chunk and decode step continues exactly where the cache ends; its next-token
logits depend on the whole cached sequence, so a request served with a corrupted or
misplaced cache would produce different tokens than when it runs alone.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.executors import step_each
from runtime.kv_cache import BlockPool, SlotPool
from runtime.llm_engine import LLMEngine
from runtime.sampling import SamplingParams
from runtime.sequence import Sequence

VOCAB = 50
EOS = 0


def fake_next(ids: list[int]) -> int:
    h = 7
    for t in ids:
        h = (h * 31 + t + 1) % 1_000_003
    return h % VOCAB


def one_hot(token: int) -> np.ndarray:
    logits = np.zeros(VOCAB, np.float32)
    logits[token] = 1.0
    return logits


class FakeExecutor:
    def __init__(self, pool: SlotPool | BlockPool) -> None:
        self.pool = pool
        self.max_sequences = pool.total
        self.cache: dict[str, list[int]] = {}

    def _check_held(self, seq: Sequence, upto: int) -> None:
        assert seq.request_id in self.pool.holders(), "ran a sequence that holds no cache"
        if isinstance(self.pool, BlockPool):
            assert len(self.pool.table(seq.request_id)) * self.pool.block_size >= upto, "ran past its blocks"
        else:
            assert upto <= self.pool.capacity

    def prefill(self, seq: Sequence, start: int, end: int) -> np.ndarray:
        cached = self.cache.setdefault(seq.request_id, [])
        assert start == len(cached) and end <= seq.num_tokens
        self._check_held(seq, end)
        cached += seq.all_ids[start:end]
        return one_hot(fake_next(cached))

    def decode(self, seqs: list[Sequence]) -> np.ndarray:
        assert len({s.request_id for s in seqs}) == len(seqs)
        rows = []
        for seq in seqs:
            cached = self.cache.setdefault(seq.request_id, [])
            assert len(cached) == seq.num_tokens - 1, "decode does not continue the cache"
            self._check_held(seq, seq.num_tokens)
            cached.append(seq.all_ids[-1])
            rows.append(one_hot(fake_next(cached)))
        return np.stack(rows)

    step = step_each

    def release(self, seq: Sequence) -> None:
        assert seq.request_id in self.pool.holders(), "released after the pool freed the space"
        self.cache.pop(seq.request_id, None)


def alone(prompt: list[int], params: SamplingParams) -> list[int]:
    ids, out = list(prompt), []
    while True:
        token = fake_next(ids)
        if token == EOS and not params.ignore_eos and len(out) < params.min_tokens:
            token = 1  # min_tokens masks EOS: the fake logits' best is then the first other token
        out.append(token)
        ids.append(token)
        if (token == EOS and not params.ignore_eos) or len(out) >= params.max_new_tokens:
            return out


requests = st.lists(
    st.tuples(st.lists(st.integers(1, VOCAB - 1), min_size=1, max_size=40),  # prompt
              st.integers(1, 30),  # max_new_tokens
              st.integers(0, 12),  # arrival step
              st.one_of(st.none(), st.integers(0, 40)),  # abort at step (None: never)
              st.booleans()),  # ignore_eos
    min_size=1, max_size=14)


def drive(pool, reqs, max_running: int, chunk: int):
    executor = FakeExecutor(pool)
    engine = LLMEngine(executor, eos_token_ids=[EOS], max_running=max_running, prefill_chunk=chunk)
    admitted: list[str] = []
    real_admit = pool.admit

    def admit(seq_id, tokens, *prompt):
        ok = real_admit(seq_id, tokens, *prompt)
        if ok and seq_id not in admitted:
            admitted.append(seq_id)
        return ok

    pool.admit = admit
    seqs: list[tuple[Sequence, list[int] | None]] = []
    arrival_order: list[str] = []
    step = 0
    pending = sorted(range(len(reqs)), key=lambda i: reqs[i][2])
    while pending or engine.has_work:
        while pending and reqs[pending[0]][2] <= step:
            i = pending.pop(0)
            prompt, max_new, _, abort_at, ignore_eos = reqs[i]
            params = SamplingParams(max_new_tokens=max_new, ignore_eos=ignore_eos, min_tokens=min(2, max_new))
            seq = engine.add_request(prompt, params, request_id=f"r{i}", detokenize=False)
            seqs.append((seq, abort_at))
            arrival_order.append(seq.request_id)
        for seq, abort_at in seqs:
            if abort_at is not None and abort_at == step:
                engine.abort(seq.request_id)
        engine.step()
        pool.check()
        assert pool.used <= pool.total
        step += 1
        assert step < 5000, "a request waits forever"
    return engine, executor, seqs, arrival_order, admitted


def check_outcome(engine, executor, pool, seqs, arrival_order, admitted) -> None:
    assert pool.used == 0 and not pool.holders(), "cache space leaked"
    assert executor.cache == {}, "executor state leaked"
    assert not engine.sequences and not engine.scheduler.running and not engine.scheduler.waiting
    assert admitted == [r for r in arrival_order if r in admitted], "admission is not first come first served"
    for seq, _ in seqs:
        assert seq.finish_reason in ("stop", "length", "abort")
        if seq.finish_reason != "abort":
            assert seq.output_ids == alone(seq.prompt_ids, seq.params), seq.request_id


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=requests, slots=st.integers(1, 5), chunk=st.integers(1, 16))
def test_slot_pool_every_request_finishes_without_leaks(reqs, slots, chunk):
    pool = SlotPool(slots, capacity=80)
    engine, executor, seqs, order, admitted = drive(pool, reqs, max_running=slots, chunk=chunk)
    check_outcome(engine, executor, pool, seqs, order, admitted)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=requests, blocks=st.integers(10, 24), block_size=st.sampled_from([2, 4, 8]),
       max_running=st.integers(1, 6), chunk=st.integers(1, 16))
def test_block_pool_preempts_and_recomputes_without_leaks(reqs, blocks, block_size, max_running, chunk):
    pool = BlockPool(blocks, block_size)
    reqs = [r for r in reqs if len(r[0]) + r[1] - 1 <= pool.max_tokens()]
    engine, executor, seqs, order, admitted = drive(pool, reqs, max_running=max_running, chunk=chunk)
    check_outcome(engine, executor, pool, seqs, order, admitted)


def test_preemption_happens_when_blocks_run_out():
    pool = BlockPool(num_blocks=6, block_size=4)
    reqs = [([1, 2, 3, 4, 5, 6, 7], 16, 0, None, True) for _ in range(3)]
    engine, executor, seqs, order, admitted = drive(pool, reqs, max_running=3, chunk=8)
    assert engine.scheduler.preemptions > 0
    check_outcome(engine, executor, pool, seqs, order, admitted)


def test_a_request_that_can_never_fit_is_refused_up_front():
    from optimizer.core.errors import InputError

    engine = LLMEngine(FakeExecutor(SlotPool(2, capacity=10)), eos_token_ids=[EOS])
    with pytest.raises(InputError, match="needs 14 cache positions; this engine holds 10"):
        engine.add_request([1] * 5, SamplingParams(max_new_tokens=10), detokenize=False)
    with pytest.raises(InputError, match="prompt is empty"):
        engine.add_request([], SamplingParams(), detokenize=False)


def test_pools_refuse_double_admission_and_account_exactly():
    slots = SlotPool(2, 8)
    assert slots.admit("a", 8) and not slots.admit("b", 9) and slots.admit("b", 3)
    assert not slots.admit("c", 1) and slots.used == 2
    with pytest.raises(ValueError):
        slots.admit("a", 1)
    slots.release("a")
    slots.release("a")  # twice is harmless
    assert slots.used == 1 and slots.admit("c", 1) and slots.slot("c") == 0
    slots.check()
    blocks = BlockPool(4, 4)
    assert blocks.admit("a", 5) and blocks.used == 2
    assert blocks.ensure("a", 8) and blocks.used == 2 and blocks.ensure("a", 9) and blocks.used == 3
    assert not blocks.admit("b", 8) and blocks.admit("b", 4) and not blocks.ensure("b", 5)
    blocks.release("a")
    assert blocks.used == 1 and blocks.ensure("b", 16)
    blocks.check()
