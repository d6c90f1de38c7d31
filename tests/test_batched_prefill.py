"""Batched prefill on the static layout: the first chunks of sequences in consecutive slots
run as one right-padded call, and each row's logits come from its own last position
(`logits_positions`). CPU provider here; tests/test_cuda_graph.py runs it on a GPU."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine, SamplingParams
from runtime.executors import StaticExecutor, prefill_groups
from runtime.llm_engine import LLMEngine
from runtime.sequence import Sequence


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    out = tmp_path_factory.mktemp("prefill") / "engine"
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-llama", kv_slots=4, kv_capacity=64,
                              quiet=True))
    return Engine.load(out)


def test_first_chunks_in_consecutive_slots_group():
    # (slot, start, length)
    assert prefill_groups([(0, 0, 8), (1, 0, 8), (2, 0, 7)]) == [[0, 1, 2]]
    assert prefill_groups([(2, 0, 8), (0, 0, 8), (1, 0, 8)]) == [[1, 2, 0]]  # by slot
    assert prefill_groups([(0, 0, 8), (2, 0, 8)]) == [[0], [1]]  # slot 1 between them
    assert prefill_groups([(0, 0, 8), (1, 16, 8), (2, 0, 8)]) == [[0], [1], [2]]  # a later chunk runs alone
    assert prefill_groups([(0, 0, 4)]) == [[0]]


def test_groups_pad_at_most_the_allowed_share():
    assert prefill_groups([(0, 0, 10), (1, 0, 2)]) == [[0], [1]]  # 20 padded for 12 real
    assert prefill_groups([(0, 0, 10), (1, 0, 2)], waste=0.5) == [[0, 1]]
    assert prefill_groups([(0, 0, 10), (1, 0, 8), (2, 0, 9), (3, 0, 1)]) == [[0, 1, 2], [3]]


def test_static_engines_take_each_rows_logits_position(engine):
    model = ir.load(engine.dir.model_path)
    names = [v.name for v in model.graph.inputs]
    assert "logits_positions" in names and "logits_from" not in names
    gather = next(n for n in model.graph if n.name == "logits_positions/gather")
    assert gather.op_type == "GatherElements"
    report = {p["name"]: p for p in engine.manifest["passes"]}["kv-layout"]
    assert "logits_positions" in report["notes"][0]


def _prefill_then_decode(executor: StaticExecutor, prompts: list[list[int]], batched: bool,
                         steps: int = 4) -> list[np.ndarray]:
    seqs = [Sequence(str(i), p, SamplingParams(max_new_tokens=20), []) for i, p in enumerate(prompts)]
    for seq in seqs:
        executor.pool.admit(seq.request_id, 40)
    chunks = [(seq, 0, seq.num_tokens) for seq in seqs]
    if batched:
        out = executor.prefill_chunks(chunks)
    else:
        out = [executor.prefill(*chunk) for chunk in chunks]
    for seq, row in zip(seqs, out):
        seq.append(int(row.argmax()))
    for _ in range(steps):
        logits = executor.decode(seqs)
        out.append(logits.copy())
        for seq, row in zip(seqs, logits):
            seq.append(int(row.argmax()))
    return out


def test_batched_prefill_gives_each_prompt_its_own_logits(engine, monkeypatch):
    """Prompts of 9, 7 and 8 tokens in one padded call: each row's last logits, and the decode
    steps after them, equal those of three separate prefills (the padding's keys and values
    are overwritten or never read)."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(10, 400, n).tolist() for n in (9, 7, 8)]
    batched = StaticExecutor(engine.session, slots=4, capacity=64)
    assert batched.batched_prefill
    calls = []
    original = StaticExecutor._prefill_rows
    monkeypatch.setattr(StaticExecutor, "_prefill_rows", lambda self, c: calls.append(len(c)) or original(self, c))
    got = _prefill_then_decode(batched, prompts, batched=True)
    want = _prefill_then_decode(StaticExecutor(engine.session, slots=4, capacity=64), prompts, batched=False)
    assert calls == [3]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_engine_loop_with_batched_prefills_serves_what_it_serves_alone(engine):
    """Through the continuous-batching loop with a prefill budget that admits every prompt in
    one iteration: the same greedy tokens as each prompt generated alone."""
    rng = np.random.default_rng(1)
    prompts = [rng.integers(10, 400, n).tolist() for n in (12, 10, 11, 12)]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    alone = [engine.generate_ids(p, params).token_ids for p in prompts]
    executor = StaticExecutor(engine.session, slots=4, capacity=64)
    llm = LLMEngine(executor, prefill_budget=256)
    seqs = llm.run([llm.make_sequence(p, params, detokenize=False) for p in prompts])
    assert [s.output_ids for s in seqs] == alone
