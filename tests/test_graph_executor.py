"""Device-side decoding: batch buckets, the fixed-width mask, the sampler graph and the
graph executor. Everything here runs on onnxruntime's CPU provider (same graphs, same
buffers, no capture); tests/test_cuda_graph.py runs the captured path on a GPU."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optimizer.core.errors import EngineError
from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine, SamplingParams
from runtime.decode_choice import choose_packed, choose_tokens
from runtime.device_sampler import DeviceSampler, RowParams
from runtime.sampler_graph import sampler_model
from runtime.executors import StaticExecutor
from runtime.graph_executor import GraphStaticExecutor, batch_buckets, bucket_for, mask_rows, unsupported_reason
from runtime.llm_engine import LLMEngine
from runtime.sequence import Sequence
from runtime.sampling import draw_uniform, filter_top_k, filter_top_p, sample_from_uniform, softmax


def test_buckets_cover_every_batch_size():
    assert batch_buckets(1) == (1,)
    assert batch_buckets(8) == (1, 2, 4, 8)
    assert batch_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    for slots in (1, 3, 8, 48, 64):
        buckets = batch_buckets(slots)
        for rows in range(1, slots + 1):
            b = bucket_for(rows, buckets)
            assert b >= rows and all(x < rows for x in buckets if x < b)
    with pytest.raises(ValueError):
        bucket_for(9, batch_buckets(8))


def test_mask_rows_keeps_each_row_ones_over_its_length():
    rng = np.random.default_rng(0)
    mask, encoded = np.zeros((5, 12), np.int64), np.zeros(5, np.int64)
    for _ in range(40):
        lengths = np.where(rng.random(5) < 0.7, np.minimum(encoded + 1, 12), rng.integers(1, 13, 5))
        mask_rows(mask, encoded, lengths)
        want = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int64)
        assert np.array_equal(mask, want) and np.array_equal(encoded, lengths)


def _host_choice(logits: np.ndarray, params: SamplingParams, u: float) -> int:
    if params.temperature == 0:
        return int(np.argmax(logits))
    scaled = filter_top_p(filter_top_k(logits.astype(np.float64) / params.temperature, params.top_k), params.top_p)
    return sample_from_uniform(softmax(scaled), u)


def _sample_rows(session, logits: np.ndarray, row_params, rng) -> tuple[list[int], list, RowParams]:
    """Run the sampler graph on (rows, 1, V) logits, row r sampled with row_params(r), one
    uniform per row: the host sampler's tokens, the graph's (tokens, logprobs, fallback), and
    the rows' parameters."""
    rows = logits.shape[0]
    rp, wanted = RowParams.empty(rows), []
    for r in range(rows):
        params, u = row_params(r), draw_uniform(rng)
        rp.set(r, params, u)
        wanted.append(_host_choice(logits[r, 0], params, u))
    return wanted, session.run(None, {"logits": logits, "temperature": rp.temperature, "top_k": rp.top_k,
                                      "top_p": rp.top_p, "uniform": rp.uniform}), rp


def test_sampler_graph_chooses_what_the_host_sampler_chooses():
    """Every parameter mix, one uniform per row: the graph's token equals the host's (or the
    row is flagged for the host), and its logprob is log_softmax of the raw logits."""
    vocab, rows, candidates = 1000, 48, 64  # 4 groups of 256 (the last one padded)
    model = sampler_model(vocab, "sample", candidates=candidates)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    compared = flagged = 0
    for trial in range(12):
        logits = (rng.normal(size=(rows, 1, vocab)) * rng.uniform(0.5, 4)).astype(np.float32)
        wanted, (tokens, logprobs, fallback), rp = _sample_rows(session, logits, lambda r: SamplingParams(
            temperature=[0.0, 0.7, 1.0, 1.3][r % 4], top_k=[0, 5, 50, 100][(r // 4) % 4],
            top_p=[1.0, 0.9, 0.5][(r // 16) % 3]), rng)
        for r in range(rows):
            raw = logits[r, 0].astype(np.float64)
            if fallback[r]:
                flagged += 1
                top_k = rp.top_k[r]
                assert top_k > candidates or (top_k == 0 and rp.top_p[r] < 1)
                continue
            compared += 1
            assert tokens[r] == wanted[r], (trial, r)
            want_lp = raw[tokens[r]] - raw.max() - np.log(np.exp(raw - raw.max()).sum())
            assert abs(logprobs[r] - want_lp) < 1e-4
    assert compared > 400 and flagged > 0  # both paths exercised


def test_top_k_keeps_the_kth_tokens_ties_as_the_host_does():
    """fp16 logits tie often (random-weight engines on CUDA: seen as device and host tokens
    that differed from a request's second token on); the top-k cut keeps every token as likely
    as the k-th, on the device as on the host, and a row whose ties reach past the candidates
    goes to the host."""
    vocab, rows, candidates = 1000, 32, 64
    session = ort.InferenceSession(sampler_model(vocab, "sample", candidates=candidates).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    compared = flagged = 0
    for trial in range(10):
        # a coarse grid: many equal logits, at the k-th among them
        logits = np.round(rng.normal(size=(rows, 1, vocab)) * 4).astype(np.float16).astype(np.float32)
        wanted, (tokens, _, fallback), rp = _sample_rows(session, logits, lambda r: SamplingParams(
            temperature=0.8, top_k=[3, 10, 40, 60][r % 4], top_p=[1.0, 0.9][(r // 4) % 2]), rng)
        for r in range(rows):
            if fallback[r]:
                flagged += 1
                row = np.sort(logits[r, 0])[::-1]
                assert row[candidates - 1] == row[rp.top_k[r] - 1]  # its ties reach the last candidate
                continue
            compared += 1
            assert tokens[r] == wanted[r], (trial, r)
    assert compared > 200


def test_whole_vocabulary_graph_equals_the_sample_graph_and_flags_cuts():
    """The `full` graph (steps without top-k / top-p) gives the `sample` graph's tokens and
    logprobs on greedy and temperature-only rows, and hands any row with a cut to the host."""
    vocab, rows = 1000, 24
    sessions = {kind: ort.InferenceSession(sampler_model(vocab, kind, candidates=64).SerializeToString(),
                                           providers=["CPUExecutionProvider"]) for kind in ("full", "sample")}
    rng = np.random.default_rng(4)
    for trial in range(6):
        logits = (rng.normal(size=(rows, 1, vocab)) * rng.uniform(0.5, 4)).astype(np.float32)
        rp = RowParams.empty(rows)
        for r in range(rows):
            cut = r % 6 == 5  # a few rows with top-k or top-p
            rp.set(r, SamplingParams(temperature=[0.0, 0.6, 1.0, 1.4][r % 4], top_k=7 if cut and r % 4 else 0,
                                     top_p=0.8 if cut else 1.0), draw_uniform(rng))
        feeds = {"logits": logits, "temperature": rp.temperature, "top_k": rp.top_k, "top_p": rp.top_p,
                 "uniform": rp.uniform}
        full, sample = (sessions[k].run(None, feeds) for k in ("full", "sample"))
        cut_rows = (rp.temperature > 0) & ((rp.top_k > 0) | (rp.top_p < 1))
        assert full[2].tolist() == cut_rows.tolist()  # fallback: exactly the rows with a cut
        keep = ~cut_rows
        assert np.array_equal(full[0][keep], sample[0][keep]), trial
        assert np.allclose(full[1][keep], sample[1][keep], atol=1e-6)
    assert RowParams.empty(4).kind(4) == "greedy"
    assert RowParams.empty(4).kind(4, logprobs=True) == "full"
    assert rp.kind(rows) == "sample" and rp.kind(5) == "full"  # row 5 is the first with a cut


def test_greedy_sampler_graph_is_argmax():
    logits = np.random.default_rng(1).normal(size=(7, 1, 50)).astype(np.float32)
    session = ort.InferenceSession(sampler_model(50, "greedy").SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    tokens, = session.run(None, {"logits": logits})
    assert tokens.tolist() == logits[:, 0].argmax(-1).tolist()


@pytest.fixture(scope="module")
def llama_engine(tmp_path_factory, smol_tokenizer_dir) -> Engine:
    out = tmp_path_factory.mktemp("graph") / "engine"
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-llama", kv_slots=5, kv_capacity=64,
                              tokenizer=str(smol_tokenizer_dir), quiet=True))
    return Engine.load(out)


def _serve(executor, prompts: list[list[int]], params: list[SamplingParams]) -> list[list[int]]:
    engine = LLMEngine(executor, None, eos_token_ids=[7])
    seqs = [engine.make_sequence(p, sp, detokenize=False) for p, sp in zip(prompts, params)]
    for seq in seqs[:3]:  # three at once, then the rest arrive while they run (buckets change)
        engine.add_sequence(seq)
    for _ in range(3):
        engine.step()
    engine.run(seqs[3:])
    while engine.has_work:
        engine.step()
    return [s.output_ids for s in seqs]


def test_graph_executor_serves_what_the_static_executor_serves(llama_engine):
    """Continuous batching with the device-side step (CPU provider, no capture): greedy, seeded
    sampling, top-k / top-p beyond the sampler's candidates (host rows) and min_tokens (EOS
    masked on the host) give the host-sampled executor's tokens."""
    session = llama_engine.session
    assert unsupported_reason(session) is None
    rng = np.random.default_rng(3)
    prompts = [rng.integers(10, 400, n).tolist() for n in (5, 11, 3, 17, 8, 2)]
    params = [SamplingParams(max_new_tokens=12, ignore_eos=True),
              SamplingParams(max_new_tokens=9, temperature=0.8, seed=11),
              SamplingParams(max_new_tokens=14, temperature=1.0, top_k=20, top_p=0.9, seed=5),
              SamplingParams(max_new_tokens=7, temperature=1.2, top_k=400, seed=2),  # beyond the candidates
              SamplingParams(max_new_tokens=10, min_tokens=6, temperature=0.7, top_p=0.95, seed=9),
              SamplingParams(max_new_tokens=6)]
    graph = GraphStaticExecutor(session, slots=5, capacity=64, candidates=32)
    want = _serve(StaticExecutor(session, slots=5, capacity=64), prompts, params)
    got = _serve(graph, prompts, params)
    assert got == want
    assert graph.host_sampled > 0 and set(graph._steps) <= set(graph.buckets)


def test_generate_ids_through_the_graph_executor(llama_engine, monkeypatch):
    """The one-request loop takes device tokens from the executor where it offers them."""
    import runtime.generate

    prompt = llama_engine.encode("Hello there")
    params = SamplingParams(max_new_tokens=10, ignore_eos=True, temperature=0.9, seed=3)
    want = llama_engine.generate_ids(prompt, params).token_ids
    monkeypatch.setattr(runtime.generate, "make_executor",
                        lambda session, slots, capacity: GraphStaticExecutor(session, slots, capacity))
    assert llama_engine.generate_ids(prompt, params).token_ids == want


def test_all_greedy_steps_take_the_engines_own_argmax(llama_engine, monkeypatch):
    """The greedy-tokens pass gives the engine a greedy_tokens output (argmax of its logits);
    a decode step whose rows are all greedy reads it and runs no sampler graph, and serves the
    host sampler's tokens."""
    session = llama_engine.session
    assert "greedy_tokens" in session.output_names
    rng = np.random.default_rng(4)
    prompts = [rng.integers(10, 400, n).tolist() for n in (6, 13, 4)]
    params = [SamplingParams(max_new_tokens=10, ignore_eos=True)] * 3
    graph = GraphStaticExecutor(session, slots=4, capacity=64)
    runs = []
    original = graph.sampler.run
    monkeypatch.setattr(graph.sampler, "run", lambda *a, **k: runs.append(a[0]) or original(*a, **k))
    want = _serve(StaticExecutor(session, slots=4, capacity=64), prompts, params)
    assert _serve(graph, prompts, params) == want
    assert runs == []


def test_greedy_tokens_output_is_the_logits_argmax(llama_engine):
    ids = np.asarray([[5, 9, 200, 31]], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "logits_positions": np.arange(4, dtype=np.int64)[None]}
    kv = llama_engine.session.kv
    empty = np.zeros((1, kv.num_kv_heads, 0, kv.head_dim), np.float32)
    for i in range(kv.num_layers):
        feeds[kv.past_key.format(i=i)] = feeds[kv.past_value.format(i=i)] = empty
    logits, tokens = llama_engine.session.session.run(["logits", "greedy_tokens"], feeds)
    assert tokens.shape == (1, 4) and tokens.tolist() == logits.argmax(-1).tolist()


def test_int4_kernel_choice_by_slots_and_request(monkeypatch):
    from optimizer.core.errors import EngineError
    from runtime.session import INT4_KERNELS, int4_kernel_choice

    monkeypatch.delenv("OPTIMIZER_CUDA_INT4", raising=False)
    assert int4_kernel_choice(None, 1) == "one-row" and int4_kernel_choice(None, 16) == "rows"
    assert int4_kernel_choice("rows", 1) == "rows" and int4_kernel_choice("one-row", 64) == "one-row"
    monkeypatch.setenv("OPTIMIZER_CUDA_INT4", "one-row")
    assert int4_kernel_choice(None, 64) == "one-row"
    with pytest.raises(EngineError, match="one-row"):
        int4_kernel_choice("fast", 4)
    assert INT4_KERNELS["rows"]["ep.cuda.fpa_intb_gemm"] == "1" and INT4_KERNELS["one-row"]["ep.cuda.fpa_intb_gemm"] == "0"


def test_decode_choice_on_a_paged_logits_buffer():
    """The paged graph executor's step: logits (1, b, V) read in place by the sampler as
    (b, 1, V), rows 0..n-1 of a bucket b; greedy rows, seeded sampling, a penalty row (host)
    and a top-k wider than the candidates (handed back) give each sequence's host choice."""
    vocab, size, candidates = 300, 8, 16
    rng = np.random.default_rng(7)
    logits = (rng.normal(size=(1, size, vocab)) * 3).astype(np.float32)
    buffer = ort.OrtValue.ortvalue_from_numpy(logits, "cpu", 0)
    sampler = DeviceSampler(vocab, np.float32, "cpu", None, candidates)
    sampler.bind(size, buffer)
    params = [SamplingParams(), SamplingParams(temperature=0.9, seed=1),
              SamplingParams(temperature=1.1, top_k=8, top_p=0.9, seed=2),
              SamplingParams(temperature=0.8, presence_penalty=1.5, seed=3),  # the host applies it
              SamplingParams(temperature=1.0, top_k=200, seed=4),  # wider than the candidates
              SamplingParams(temperature=0.7, seed=5)]
    seqs = [Sequence(f"r{i}", [1, 2, 3], p) for i, p in enumerate(params)]
    twins = [Sequence(f"r{i}", [1, 2, 3], p) for i, p in enumerate(params)]  # the host's choice
    for seq in seqs + twins:
        seq.output_ids.append(5)  # an earlier token, so the presence penalty changes something
        seq._counts[5] = 1
    tokens, on_host = choose_tokens(seqs, np.arange(len(seqs)), size, RowParams.empty(size),
                                    lambda p: sampler.run(size, size, p), lambda: logits[0].argmax(-1),
                                    lambda: logits[0])
    want = [twin.choose(logits[0, i], None if twin.params.temperature == 0 else draw_uniform(twin.rng))
            for i, twin in enumerate(twins)]
    assert tokens == want and on_host == 2
    with pytest.raises(ValueError, match="rows"):
        sampler.bind(4, buffer)  # a buffer of 8 rows is not a bucket of 4


def test_an_eager_packed_steps_rows_are_chosen_on_the_device():
    """A paged step with prefill chunks runs eagerly: its logits (1, rows, V) are read in place
    by the sampler (`run_on`, no bucket). Each decode and each chunk that ends its prompt gets
    the token the host would choose with the same random numbers; a chunk in the middle of its
    prompt gets None and draws nothing from its generator."""
    vocab, candidates = 300, 32
    rng = np.random.default_rng(9)
    params = [SamplingParams(temperature=0.9, seed=1),  # a chunk ending its prompt
              SamplingParams(temperature=0.8, seed=2),  # a chunk in the middle: no token, no draw
              SamplingParams(),  # a chunk ending its prompt, greedy
              SamplingParams(temperature=1.0, top_k=8, top_p=0.9, seed=3),  # decodes from here on
              SamplingParams(temperature=0.7, min_tokens=3, seed=4),  # EOS held back: the host
              SamplingParams(temperature=1.2, top_k=100, seed=5),  # wider than the candidates: the host
              SamplingParams()]
    rows = len(params)
    logits = (rng.normal(size=(1, rows, vocab)) * 3).astype(np.float32)
    buffer = ort.OrtValue.ortvalue_from_numpy(logits, "cpu", 0)
    sampler = DeviceSampler(vocab, np.float32, "cpu", None, candidates)

    def sequences():
        seqs = [Sequence(f"r{i}", list(range(10, 20)), p, eos_token_ids=[7]) for i, p in enumerate(params)]
        for seq in seqs[3:]:
            seq.output_ids.append(5)
        return seqs

    seqs, twins = sequences(), sequences()
    prefill = [(seqs[0], 4, 10), (seqs[1], 0, 6), (seqs[2], 0, 10)]
    chunk_tokens, tokens, on_host = choose_packed(prefill, seqs[3:], RowParams.empty(8),
                                                  lambda p: sampler.run_on(buffer, rows, p),
                                                  lambda: logits[0].argmax(-1), lambda: logits[0])
    want = [None if i == 1 else twin.choose(logits[0, i], None if twin.params.temperature == 0 or twin.suppressing()
                                            else draw_uniform(twin.rng))
            for i, twin in enumerate(twins)]
    assert chunk_tokens + tokens == want and on_host == 2
    assert seqs[1].rng.random() == twins[1].rng.random()  # the unfinished chunk drew nothing
    assert choose_packed(prefill[1:2], [], RowParams.empty(8), None, None, None) == ([None], [], 0)
    with pytest.raises(ValueError, match="rows"):
        sampler.run_on(buffer, rows - 1, RowParams.empty(8))


def test_steps_split_where_flash_cannot_read_the_blocks(monkeypatch):
    """onnxruntime's flash kernel reads paged blocks in place only for block sizes that are
    multiples of its key tile (256 / 128 / 64 by head size): elsewhere steps with prefill
    chunks leave the decodes to their own captured call; OPTIMIZER_PAGED_SPLIT overrides."""
    from optimizer.core.engine_format import flash_paged_block
    from runtime.paged_graphs import split_mixed_steps

    assert [flash_paged_block(d) for d in (32, 64, 96, 128, 256)] == [256, 256, 128, 128, 64]
    monkeypatch.delenv("OPTIMIZER_PAGED_SPLIT", raising=False)
    assert split_mixed_steps(128, 16) and not split_mixed_steps(128, 128) and not split_mixed_steps(128, 256)
    assert split_mixed_steps(64, 128) and not split_mixed_steps(64, 256)
    assert not split_mixed_steps(128, 16, "0") and split_mixed_steps(128, 128, "1")
    monkeypatch.setenv("OPTIMIZER_PAGED_SPLIT", "1")
    assert split_mixed_steps(128, 128)
    monkeypatch.setenv("OPTIMIZER_PAGED_SPLIT", "yes")
    with pytest.raises(EngineError, match="OPTIMIZER_PAGED_SPLIT"):
        split_mixed_steps(128, 16)


def test_paged_steps_with_prefill_go_packed_or_split(monkeypatch):
    """GraphPagedExecutor.step_tokens' routing (its kernels are CUDA-only; the calls are
    recorded here): decode-only steps replay a bucket; steps with prefill chunks run packed in
    one eager call, or the chunks alone and then the decodes' replay where steps split; engines
    without logits_indices leave packed steps to the host path."""
    from runtime.paged import LOGITS_INDICES, PagedExecutor
    from runtime.paged_graphs import GraphPagedExecutor

    calls = []
    executor = object.__new__(GraphPagedExecutor)  # no session: only the routing runs
    executor._inputs = {LOGITS_INDICES}
    executor._packed_tokens = lambda prefill, decode: (calls.append(("packed", len(prefill), len(decode)))
                                                       or ([1] * len(prefill), [2] * len(decode) or None))
    executor._decode_tokens = lambda decode: calls.append(("replay", len(decode))) or [3] * len(decode)
    chunk = (Sequence("p", [1, 2, 3], SamplingParams()), 0, 3)
    decoding = [Sequence("d", [4, 5], SamplingParams())]
    for split in (False, True):
        executor.split_steps = split
        calls.clear()
        assert executor.step_tokens([], decoding) == ([], [3]) and calls == [("replay", 1)]
        calls.clear()
        assert executor.step_tokens([chunk], []) == ([1], None) and calls == [("packed", 1, 0)]
        calls.clear()
        got = executor.step_tokens([chunk], decoding)
        assert got == (([1], [3]) if split else ([1], [2]))
        assert calls == ([("packed", 1, 0), ("replay", 1)] if split else [("packed", 1, 1)])
    assert executor.step_tokens([], []) == ([], None)
    executor._inputs = set()
    host = []
    monkeypatch.setattr(PagedExecutor, "step_tokens",
                        lambda self, prefill, decode: host.append((len(prefill), len(decode))) or ([None], None))
    executor.split_steps = False
    assert executor.step_tokens([chunk], decoding) == ([None], None) and host == [(1, 1)]
    executor.split_steps, host[:] = True, []
    calls.clear()
    assert executor.step_tokens([chunk], decoding) == ([None], [3]) and host == [(1, 0)]
    assert calls == [("replay", 1)]


def test_the_host_paths_steps_split_as_the_device_paths_do(monkeypatch):
    """GraphPagedExecutor.step (logits for the host to choose from) runs a step as step_tokens
    does: decode-only steps replay a bucket, mixed steps packed or split alike, so that the
    host path and the device path compute the same numbers (a packed step's GEMMs have other
    shapes than a split one's, and fp16 rounding differs)."""
    from runtime.paged import PagedExecutor
    from runtime.paged_graphs import GraphPagedExecutor

    calls = []
    executor = object.__new__(GraphPagedExecutor)

    class Step:  # a replayed bucket: logits (1, size, V)
        logits = type("V", (), {"numpy": staticmethod(lambda: np.full((1, 4, 2), 7.0))})()

    executor._replay = lambda decode: calls.append(("replay", len(decode))) or (Step, 4)
    monkeypatch.setattr(PagedExecutor, "step", lambda self, prefill, decode: calls.append(
        ("packed", len(prefill), len(decode))) or ([np.zeros(2)] * len(prefill), np.ones((len(decode), 2)) if decode else None))
    chunk = (Sequence("p", [1, 2, 3], SamplingParams()), 0, 3)
    decoding = [Sequence("d", [4, 5], SamplingParams())]
    for split in (False, True):
        executor.split_steps = split
        calls.clear()
        rows, logits = executor.step([], decoding)
        assert rows == [] and logits.tolist() == [[7.0, 7.0]] and calls == [("replay", 1)]
        calls.clear()
        rows, logits = executor.step([chunk], decoding)
        assert len(rows) == 1 and logits.tolist() == ([[7.0, 7.0]] if split else [[1.0, 1.0]])
        assert calls == ([("packed", 1, 0), ("replay", 1)] if split else [("packed", 1, 1)])
        calls.clear()
        rows, logits = executor.step([chunk], [])
        assert len(rows) == 1 and logits is None and calls == [("packed", 1, 0)]
