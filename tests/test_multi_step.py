"""Multi-step decoding (runtime.multi_step) in the engine loop: k greedy decode steps per round
give exactly the tokens of single steps. The device side (queued replays and copies on a CUDA
stream) runs on CUDA only (tests/test_paged_cuda.py); here a fake executor computes each token
from the sequence's state, as a model would, so rounds and single steps must agree."""

from __future__ import annotations

import random

import numpy as np
import pytest

from optimizer.core.errors import EngineError, InputError
from runtime.kv_cache import BlockPool
from runtime.llm_engine import LLMEngine
from runtime.multi_step import DEFAULT_STEPS, decode_steps_wanted, past_rows, plan_steps
from runtime.sampling import SamplingParams
from runtime.sequence import Sequence

VOCAB, EOS, BLOCK = 97, 3, 4


def next_token(last: int, position: int) -> int:
    return (last * 7 + position * 13) % VOCAB


class FakeExecutor:
    """Greedy tokens from (last token, position). It keeps how many positions of each sequence
    its cache holds, as a model's would, and checks that every step continues from there (no
    position computed twice or skipped) and that a round's positions lie in blocks the
    sequence holds, as the device's block tables must."""

    samples_on_device = True

    def __init__(self, sequences: int, decode_steps: int) -> None:
        self.pool = BlockPool(sequences * 16, BLOCK, 16)
        self.max_sequences = sequences
        self.decode_steps = decode_steps
        self.rounds: list[int] = []
        self.cached: dict[str, int] = {}

    def release(self, seq) -> None:
        self.cached.pop(seq.request_id, None)

    def _decoded(self, s, k: int) -> None:
        assert self.cached.get(s.request_id, 0) == s.num_tokens - 1, "a decode does not continue its cache"
        self.cached[s.request_id] = s.num_tokens - 1 + k

    def step_tokens(self, prefill, decode):
        for seq, start, end in prefill:
            assert start == self.cached.get(seq.request_id, 0), "a prefill chunk does not continue its cache"
            self.cached[seq.request_id] = end
        for s in decode:
            self._decoded(s, 1)
        return ([next_token(seq.all_ids[end - 1], end) for seq, _, end in prefill],
                [next_token(s.last_token, s.num_tokens) for s in decode] if decode else None)

    def decode_rounds(self, seqs, k):
        self.rounds.append(k)
        out = []
        for s in seqs:
            assert len(self.pool.table(s.request_id)) * BLOCK >= s.num_tokens + k - 1, "a round ran past its blocks"
            self._decoded(s, k)
            last, position, tokens = s.last_token, s.num_tokens, []
            for _ in range(k):
                last = next_token(last, position)
                tokens.append(last)
                position += 1
            out.append(tokens)
        return out


def _run(steps: int, requests, max_running: int = 6, **engine_args):
    executor = FakeExecutor(max_running, steps)
    llm = LLMEngine(executor, None, eos_token_ids=[EOS], max_running=max_running, **engine_args)
    seqs = [llm.add_request(p, params, detokenize=False) for p, params in requests]
    while llm.has_work:
        llm.step()
        llm.scheduler.pool.check()
    assert llm.scheduler.pool.used == 0
    return [(s.output_ids, s.finish_reason) for s in seqs], executor.rounds


def test_rounds_of_k_steps_give_the_tokens_of_single_steps():
    rng = random.Random(0)
    requests = [([rng.randrange(VOCAB) for _ in range(rng.randint(1, 12))],
                  SamplingParams(max_new_tokens=rng.randint(1, 40), ignore_eos=rng.random() < 0.5)) for _ in range(16)]
    single, no_rounds = _run(1, requests)
    assert no_rounds == []
    assert any(reason == "stop" for _, reason in single) and any(reason == "length" for _, reason in single)
    for steps in (2, 4, 8):
        multi, rounds = _run(steps, requests)
        assert multi == single, steps
        assert rounds and max(rounds) == steps  # rounds ran, none longer than asked


def test_the_loop_limits_rounds_to_its_own_decode_steps():
    """LLMEngine(decode_steps=k) caps the executor's rounds (the server's default is 1); a loop
    whose rows the host chooses runs no rounds; the tokens stay those of single steps."""
    rng = random.Random(2)
    requests = [([rng.randrange(VOCAB) for _ in range(rng.randint(1, 12))],
                 SamplingParams(max_new_tokens=rng.randint(5, 30), ignore_eos=True)) for _ in range(8)]
    single, _ = _run(1, requests)
    capped, rounds = _run(8, requests, decode_steps=3)
    assert capped == single and rounds and max(rounds) == 3
    off, rounds = _run(8, requests, decode_steps=1)
    assert off == single and rounds == []
    executor = FakeExecutor(6, 8)
    llm = LLMEngine(executor, None, eos_token_ids=[EOS], max_running=6)
    llm.scheduler.pool.admit("a", 2)
    plan = type("Plan", (), {"prefill": [], "decode": [Sequence("a", [5, 6], SamplingParams())]})()
    assert llm._decode_steps(plan) == llm.max_decode_steps == 8
    llm.samples_on_device = False  # the host would choose every row: no rounds on the device
    assert llm._decode_steps(plan) == llm.max_decode_steps == 1
    assert LLMEngine(FakeExecutor(2, 8), None, decode_steps=3).max_decode_steps == 3
    assert LLMEngine(FakeExecutor(2, 2), None, decode_steps=3).max_decode_steps == 2
    with pytest.raises(InputError, match="decode_steps"):
        LLMEngine(FakeExecutor(2, 8), None, decode_steps=0)


def test_rounds_only_where_every_row_is_greedy_and_nobody_waits():
    pool = BlockPool(64, BLOCK, 16)
    greedy = [Sequence(str(i), [5, 6, 7], SamplingParams(max_new_tokens=20)) for i in range(3)]
    for s in greedy:
        pool.admit(s.request_id, s.num_tokens)
    assert plan_steps(greedy, 8, pool, waiting=False) == 8
    assert all(len(pool.table(s.request_id)) * BLOCK >= s.num_tokens + 7 for s in greedy)
    assert plan_steps(greedy, 8, pool, waiting=True) == 1
    assert plan_steps(greedy, 1, pool, waiting=False) == 1
    sampled = Sequence("s", [5, 6], SamplingParams(max_new_tokens=20, temperature=0.7))
    pool.admit("s", 2)
    assert plan_steps(greedy + [sampled], 8, pool, waiting=False) == 1
    short = Sequence("t", [5, 6], SamplingParams(max_new_tokens=3))
    pool.admit("t", 2)
    assert plan_steps(greedy + [short], 8, pool, waiting=False) == 3  # nobody runs past its last token
    full = BlockPool(2, BLOCK, 16)  # each sequence holds one block, none is free
    for s in greedy[:2]:
        full.admit(s.request_id, s.num_tokens)
    assert plan_steps(greedy[:2], 8, full, waiting=False) == 1  # no blocks for the round


def test_past_rows_advance_real_rows_only():
    rows = past_rows(np.asarray([4, 9, 0, 0], np.int32), rows=2, steps=3)
    assert rows.tolist() == [[4, 9, 0, 0], [5, 10, 0, 0], [6, 11, 0, 0]]


def test_decode_steps_option(monkeypatch):
    monkeypatch.delenv("OPTIMIZER_DECODE_STEPS", raising=False)
    assert decode_steps_wanted() == DEFAULT_STEPS == 8
    monkeypatch.setenv("OPTIMIZER_DECODE_STEPS", "8")
    assert decode_steps_wanted() == 8 and decode_steps_wanted(2) == 2
    for bad in ("0", "x", "1000"):
        monkeypatch.setenv("OPTIMIZER_DECODE_STEPS", bad)
        with pytest.raises(EngineError, match="OPTIMIZER_DECODE_STEPS"):
            decode_steps_wanted()


class FakeSlotExecutor:
    """One sequence's greedy tokens from (last token, position), single steps or rounds, with
    its cached positions tracked as in FakeExecutor."""

    samples_on_device = True

    def __init__(self, decode_steps: int) -> None:
        self.decode_steps = decode_steps
        self.cached = 0
        self.rounds: list[int] = []

    def decode_tokens(self, seqs):
        (s,) = seqs
        assert self.cached == s.num_tokens - 1
        self.cached += 1
        return [next_token(s.last_token, s.num_tokens)]

    def decode_rounds(self, seqs, k):
        (s,) = seqs
        assert self.cached == s.num_tokens - 1
        self.cached += k
        self.rounds.append(k)
        last, position, tokens = s.last_token, s.num_tokens, []
        for _ in range(k):
            last = next_token(last, position)
            tokens.append(last)
            position += 1
        return [tokens]


def test_the_single_request_loop_runs_rounds_with_the_same_tokens():
    """generate_ids' decode loop (runtime.generate.decode_loop): rounds where the executor
    queues several steps, the same tokens and streamed tokens as single steps, nothing after
    the sequence's end; sampled requests step one at a time."""
    from runtime.generate import decode_loop

    rng = random.Random(1)
    for trial in range(20):
        prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 9))]
        params = SamplingParams(max_new_tokens=rng.randint(1, 30), ignore_eos=trial % 2 == 0)
        results = []
        for steps in (1, 4):
            seq = Sequence("0", list(prompt), params, [EOS])
            executor, streamed = FakeSlotExecutor(steps), []
            first = next_token(prompt[-1], len(prompt))
            executor.cached = len(prompt)
            decode_loop(executor, seq, first, streamed.append)
            assert streamed == seq.output_ids and seq.finished
            results.append((seq.output_ids, seq.finish_reason))
            if steps > 1 and len(seq.output_ids) > 2:
                assert executor.rounds and max(executor.rounds) <= steps
        assert results[0] == results[1], trial
    sampled = Sequence("s", [5, 6], SamplingParams(max_new_tokens=5, temperature=0.5), [EOS])
    executor = FakeSlotExecutor(4)
    executor.cached = 2
    executor.decode_tokens = lambda seqs: [7]  # sampled rows take single steps (here: token 7 always)
    decode_loop(executor, sampled, 7)
    assert sampled.output_ids == [7] * 5 and executor.rounds == []
