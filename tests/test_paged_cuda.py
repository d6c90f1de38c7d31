"""Paged engines on CUDA (onnxruntime's PagedAttention): built, verified and served.

These run where onnxruntime has its CUDA provider (onnxruntime-gpu and an NVIDIA GPU) and are
skipped elsewhere with that reason; what needs no GPU (the graph rewrite, the packed step
inputs, the refusals on CPU) is tested in test_kv_layout.py.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time

import numpy as np
import onnxruntime as ort
import pytest

from optimizer.evaluate import perplexity, session_logits_fn
from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine, SamplingParams
from runtime.async_engine import AsyncEngine
from runtime.executors import probe_logits
from runtime.llm_engine import LLMEngine
from runtime.paged import PagedExecutor, sequence_logits
from runtime.paged_graphs import GraphPagedExecutor

pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="PagedAttention is a CUDA-only onnxruntime kernel: needs onnxruntime-gpu and an NVIDIA GPU")

SLOTS, CAPACITY, BLOCK = 8, 256, 16


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma3"])  # gemma3: sliding window, QK-norm
def engines(request, tmp_path_factory):
    """The same random-weight model as a paged and a static fp16 engine, both on CUDA."""
    root = tmp_path_factory.mktemp(request.param)
    common = dict(random_weights=True, config=request.param, dtype="fp16", quiet=True, max_seq_len=512,
                  kv_slots=SLOTS, kv_capacity=CAPACITY)
    build_engine(BuildOptions(out=root / "paged", kv_layout="paged", kv_block_size=BLOCK, **common))
    build_engine(BuildOptions(out=root / "static", kv_layout="static", **common))
    return Engine.load(root / "paged", provider="cuda"), Engine.load(root / "static", provider="cuda")


def test_paged_engine_manifest_and_verification(engines):
    paged, _ = engines
    kv = paged.manifest["kv_cache"]
    assert (kv["layout"], kv["attention"], kv["block_size"]) == ("paged", "PagedAttention", BLOCK)
    assert kv["num_blocks"] == SLOTS * CAPACITY // BLOCK and kv["slots"] == SLOTS
    verification = paged.manifest["verification"]
    assert verification["top1_agreement"] >= 0.75  # fp16 against the fp32 torch model
    assert verification["max_abs_logit_diff"] < 0.05 * max(1.0, verification["max_abs_reference_logit"])


def test_paged_logits_match_the_static_engine(engines):
    """A prefill then decode steps through the block pool give the static engine's logits."""
    paged, static = engines
    ids = np.random.default_rng(0).integers(0, 49152, 70).tolist()  # crosses block boundaries
    got = sequence_logits(paged.session, ids, prefill=37)
    want = probe_logits(static.session, ids, 37)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=0.02 * max(1.0, float(np.abs(want).max())))
    windows = np.asarray([ids[:64], ids[6:70]])
    assert perplexity(session_logits_fn(paged.session), windows)["perplexity"] == pytest.approx(
        perplexity(session_logits_fn(static.session), windows)["perplexity"], rel=1e-2)


def _requests(n: int, seed: int = 0) -> list[tuple[list[int], SamplingParams]]:
    rng = random.Random(seed)
    return [([rng.randrange(49152) for _ in range(rng.randint(3, 60))],
             SamplingParams(max_new_tokens=rng.randint(4, 40), ignore_eos=True)) for _ in range(n)]


def assert_greedy_under_own_logits(session, prompt: list[int], output: list[int]) -> None:
    """Each token chosen under batching is the argmax of the sequence's logits computed alone
    (prefill + decode steps along the same tokens), up to fp16 noise. Exact token equality is
    not required: a packed step's GEMMs have other shapes than a lone sequence's, so fp16
    rounding differs and a near-tie in these random-weight models can flip."""
    logits = sequence_logits(session, prompt + output[:-1], prefill=len(prompt))[len(prompt) - 1:]
    chosen = logits[np.arange(len(output)), output]
    tolerance = 0.01 * max(1.0, float(np.abs(logits).max()))
    assert (chosen >= logits.max(-1) - tolerance).all(), \
        f"token {int(np.argmax(chosen < logits.max(-1) - tolerance))} is not the sequence's own argmax"


def test_continuous_batching_gives_each_request_its_tokens_alone(engines):
    """32 requests of mixed lengths, batched continuously over the manifest's pool (prefill
    chunks and decodes packed into one call): each one's greedy tokens are its own."""
    paged, _ = engines
    requests = _requests(32)
    llm = paged.llm()
    assert isinstance(llm.executor, PagedExecutor) and llm.scheduler.max_running == SLOTS
    seqs = [llm.add_request(p, params, detokenize=False) for p, params in requests]
    while llm.has_work:
        llm.step()
    for (prompt, params), seq in zip(requests, seqs):
        assert len(seq.output_ids) == params.max_new_tokens
        assert_greedy_under_own_logits(paged.session, prompt, seq.output_ids)
    assert llm.scheduler.pool.used == 0
    llm.scheduler.pool.check()


def test_a_full_pool_preempts_and_recomputes_each_requests_own_tokens(engines):
    """A pool too small for 8 running sequences: the scheduler preempts the newest, frees its
    blocks and recomputes it later; every request still gets its tokens, nothing leaks."""
    paged, _ = engines
    requests = _requests(16, seed=1)
    llm = paged.llm(max_batch=8, capacity=48)  # 8 x 3 blocks: 384 positions for up to ~800 wanted
    assert llm.executor.pool.num_blocks == 24
    seqs = [llm.add_request(p, params, detokenize=False) for p, params in requests]
    while llm.has_work:
        llm.step()
        llm.scheduler.pool.check()
    assert llm.scheduler.preemptions > 0
    for (prompt, params), seq in zip(requests, seqs):
        assert len(seq.output_ids) == params.max_new_tokens
        assert_greedy_under_own_logits(paged.session, prompt, seq.output_ids)
    assert llm.scheduler.pool.used == 0


def test_async_streams_and_client_aborts_leave_no_blocks(engines):
    """The serving loop on a paged engine: 24 concurrent streams, every third client hanging
    up after 3 tokens; the others get all their tokens, and every block comes back."""
    paged, _ = engines
    server = AsyncEngine(paged.llm()).start()
    requests = _requests(24, seed=3)

    async def client(i: int, prompt: list[int], params: SamplingParams) -> int:
        got = 0
        async for out in server.stream(prompt, params, detokenize=False):
            got += len(out.new_token_ids)
            if i % 3 == 0 and got >= 3:
                break  # leaving the stream aborts the request
        return got

    async def all_clients() -> list[int]:
        return await asyncio.gather(*(client(i, p, params) for i, (p, params) in enumerate(requests)))

    try:
        got = asyncio.run(all_clients())
        for i, ((_, params), n) in enumerate(zip(requests, got)):
            assert n == (3 if i % 3 == 0 else params.max_new_tokens)
        deadline = time.monotonic() + 20
        while server.llm.scheduler.pool.used or server.llm.sequences:
            assert time.monotonic() < deadline, "blocks were not freed"
            time.sleep(0.02)
        server.llm.scheduler.pool.check()
        assert server.alive
    finally:
        server.shutdown()


def test_shared_prefixes_are_served_from_shared_blocks(engines):
    """Prefix caching on the paged layout: 24 requests sharing one of two 80-token prefixes,
    with a pool that must evict; cached blocks are shared by reference and each request's
    greedy tokens are still its own; with caching off nothing is cached."""
    paged, _ = engines
    rng = random.Random(5)
    bases = [[rng.randrange(49152) for _ in range(80)] for _ in range(2)]
    requests = [(rng.choice(bases)[:rng.randint(20, 80)] + [rng.randrange(49152) for _ in range(rng.randint(1, 9))],
                 SamplingParams(max_new_tokens=rng.randint(4, 24), ignore_eos=True)) for _ in range(24)]
    for caching in (True, False):
        llm = paged.llm(max_batch=8, capacity=128, prefix_caching=caching)
        seqs = [llm.add_request(p, params, detokenize=False) for p, params in requests]
        while llm.has_work:
            llm.step()
            llm.scheduler.pool.check()
        assert llm.scheduler.pool.used == 0
        assert (llm.total_cached_tokens >= 16 * 16) if caching else llm.total_cached_tokens == 0
        for (prompt, params), seq in zip(requests, seqs):
            assert len(seq.output_ids) == params.max_new_tokens
            assert_greedy_under_own_logits(paged.session, prompt, seq.output_ids)


def _run_all(llm, requests) -> list[list[int]]:
    seqs = [llm.add_request(p, params, detokenize=False) for p, params in requests]
    while llm.has_work:
        llm.step()
    assert llm.scheduler.pool.used == 0
    return [s.output_ids for s in seqs]


def test_tokens_chosen_on_the_device_equal_the_hosts(engines):
    """Greedy rows take the engine's own argmax (only ids leave the GPU); seeded sampled rows
    are chosen by the device sampler, in captured decode steps and in eager steps with prefill
    chunks alike, min_tokens rows on the host. The same requests through the host path (every
    row's logits copied back) give the same tokens, row for row.

    The sampled rows keep their top 40 tokens: the device sums probabilities in float32 and
    the host in float64, so on a nearly flat distribution over the whole vocabulary (these
    random-weight models: ~2e-5 a token) a uniform number close to a CDF boundary picks the
    neighbouring token on one side (seen once in 24 requests on an H200, tiny-gemma3: 7114 vs
    7115). Within 40 tokens a boundary is ~1e-2 wide and such flips do not happen. fp16 logits
    tie often on these models: the top-k cut keeps the k-th token's ties on both sides (session
    36 found the device keeping exactly k, and this test failing from a request's second token)."""
    paged, _ = engines
    rng = random.Random(7)
    requests = [(p, SamplingParams(max_new_tokens=params.max_new_tokens, ignore_eos=i % 4 != 3,
                                   temperature=0.8 if i % 3 == 1 else 0.0, top_k=40 if i % 3 == 1 else 0,
                                   seed=i, min_tokens=2 * (i % 4 == 3)))
                for i, (p, params) in enumerate(_requests(24, seed=rng.randrange(99)))]
    on_device = paged.llm()
    assert on_device.samples_on_device
    host = paged.llm()
    host.samples_on_device = False  # the LLMEngine then calls executor.step and chooses every row
    assert _run_all(on_device, requests) == _run_all(host, requests)
    held = sum(params.min_tokens for _, params in requests)  # EOS held back: chosen on the host
    assert on_device.executor.host_sampled <= held, f"{on_device.executor.host_sampled} rows chosen on the host"


def test_rounds_of_decode_steps_give_the_tokens_of_single_steps(engines, monkeypatch):
    """Multi-step decoding (OPTIMIZER_DECODE_STEPS=4): a session on a stream of the runtime's,
    rounds of 4 replays queued with the copies between them, one wait; every greedy request
    gets the tokens single steps give, and rounds did run. The requests all want 23 tokens, so
    that both ways run the same batches through the same buckets (a row's fp16 rounding
    depends on its bucket's shape)."""
    paged, _ = engines
    requests = [(p, SamplingParams(max_new_tokens=23, ignore_eos=True)) for p, _ in _requests(12, seed=11)]
    single = _run_all(paged.llm(decode_steps=1), requests)
    monkeypatch.setenv("OPTIMIZER_DECODE_STEPS", "4")
    stepped = Engine.load(paged.dir.path, provider="cuda")
    assert stepped.session.decode_steps == 4 and stepped.session.stream is not None
    llm = stepped.llm()
    rounds = []
    original = llm.executor.decode_rounds
    llm.executor.decode_rounds = lambda seqs, k: rounds.append(k) or original(seqs, k)
    assert _run_all(llm, requests) == single
    assert rounds and max(rounds) == 4


def test_the_pool_is_sized_from_gpu_memory(engines):
    """--gpu-memory-fraction: the pool takes what the fraction leaves after the engine and its
    largest step; far more blocks than the manifest's, and requests still get their tokens."""
    from runtime.gpu_memory import device_memory

    paged, _ = engines
    manifest_blocks = paged.manifest["kv_cache"]["num_blocks"]
    gc.collect()  # earlier tests' pools go first
    free, total = device_memory()
    fraction = min(0.9, (total - free) / total + 2**30 / total)  # about 1 GiB more than in use now
    llm = paged.llm(gpu_memory_fraction=fraction, max_batch=SLOTS)
    memory = llm.executor.memory
    assert llm.executor.pool.num_blocks == memory["num_blocks"] > manifest_blocks
    assert 0.25 < memory["kv_gib"] < 1.1  # 1 GiB less what the largest step's activations took
    requests = _requests(12, seed=9)
    for (prompt, params), out in zip(requests, _run_all(llm, requests)):
        assert len(out) == params.max_new_tokens
        assert_greedy_under_own_logits(paged.session, prompt, out)
    with pytest.raises(Exception, match="gpu-memory-fraction"):
        engines[1].llm(gpu_memory_fraction=0.5)  # a static engine: the manifest sizes its cache


def test_fp8_kv_cache_on_the_paged_layout(tiny_hf_folders, tmp_path):
    """--kv-cache-dtype fp8: PagedAttention keeps K and V as float8 E4M3 codes (a byte each) with
    calibrated per-layer scales; the engine verifies, its logits follow the fp16 cache's within
    the codes' rounding, batched requests get their tokens, and the pool from GPU memory counts
    one byte a value."""
    common = dict(source=str(tiny_hf_folders["llama"]), dtype="fp16", quiet=True, max_seq_len=512,
                  kv_layout="paged", kv_block_size=BLOCK, kv_slots=SLOTS, kv_capacity=CAPACITY)
    build_engine(BuildOptions(out=tmp_path / "fp16", **common))
    build_engine(BuildOptions(out=tmp_path / "fp8", kv_cache_dtype="fp8", kv_calib="tiny:8x64", **common))
    fp16, fp8 = Engine.load(tmp_path / "fp16", provider="cuda"), Engine.load(tmp_path / "fp8", provider="cuda")
    kv = fp8.manifest["kv_cache"]
    assert kv["dtype"] == "fp8" and len(kv["quantization"]["scales"]) == kv["num_layers"]
    ids = np.random.default_rng(2).integers(0, 1000, 60).tolist()
    want = sequence_logits(fp16.session, ids, prefill=30)
    got = sequence_logits(fp8.session, ids, prefill=30)
    assert np.abs(got - want).max() < 0.1 * max(1.0, float(np.abs(want).max()))
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
    llm = fp8.llm(gpu_memory_fraction=0.5)
    assert llm.executor.bytes_per_block == fp16.llm().executor.bytes_per_block // 2
    requests = _requests(8, seed=4)
    for (_, params), out in zip(requests, _run_all(llm, requests)):
        assert len(out) == params.max_new_tokens


def test_decode_steps_replay_captured_graphs_per_bucket(engines):
    """Decode-only steps of a paged engine replay one CUDA graph per batch bucket (captured at
    warm-up, rows beyond the real sequences on the scratch block): every request still gets its
    own greedy tokens, sampled rows are chosen by the device sampler on the graph's logits buffer
    and no more than the min_tokens rows on the host, and nothing leaks. The same requests through
    the eager executor on the same session agree wherever fp16 rounding of the padded shapes
    (and float32 CDF boundaries of the sampler) leave no near-tie."""
    paged, _ = engines
    llm = paged.llm()
    assert isinstance(llm.executor, GraphPagedExecutor) and llm.executor.buckets == (1, 2, 4, 8)
    llm.warmup()
    assert sorted(llm.executor._steps) == [1, 2, 4, 8]
    requests = _requests(20, seed=11)
    requests = [(p, SamplingParams(max_new_tokens=params.max_new_tokens, ignore_eos=True, min_tokens=2 * (i % 5 == 4),
                                   temperature=0.7 if i % 4 == 1 else 0.0, seed=i))
                for i, (p, params) in enumerate(requests)]
    outs = _run_all(llm, requests)
    llm.scheduler.pool.check()
    for (prompt, params), out in zip(requests, outs):
        assert len(out) == params.max_new_tokens
        if params.temperature == 0:
            assert_greedy_under_own_logits(paged.session, prompt, out)
    held = sum(params.min_tokens for _, params in requests)  # at most one host row per held-back token
    assert llm.executor.host_sampled <= held, f"{llm.executor.host_sampled} decode rows chosen on the host"
    blocks = paged.manifest["kv_cache"]["num_blocks"]
    eager = LLMEngine(PagedExecutor(paged.session, SLOTS, blocks, BLOCK))
    assert not isinstance(eager.executor, GraphPagedExecutor)
    same = sum(a == b for a, b in zip(outs, _run_all(eager, requests)))
    assert same >= len(requests) // 2, f"only {same} of {len(requests)} requests match the eager executor"


@pytest.mark.parametrize("choice", ["0", "1"])
def test_steps_with_prefill_chunks_packed_or_split(engines, monkeypatch, choice):
    """A step with prefill chunks runs its decodes packed with them (one eager call) or apart
    (`OPTIMIZER_PAGED_SPLIT=1`: the chunks eagerly, the decodes from their bucket's graph):
    either way every request gets its own greedy tokens and its sampled ones, and the pool
    ends empty. Requests arrive while others decode, so most steps mix the two."""
    monkeypatch.setenv("OPTIMIZER_PAGED_SPLIT", choice)
    paged, _ = engines
    llm = paged.llm()
    assert isinstance(llm.executor, GraphPagedExecutor) and llm.executor.split_steps == (choice == "1")
    requests = [(p, SamplingParams(max_new_tokens=params.max_new_tokens, ignore_eos=True,
                                   temperature=0.9 if i % 3 == 2 else 0.0, seed=i))
                for i, (p, params) in enumerate(_requests(16, seed=17))]
    seqs = []
    for prompt, params in requests:  # one new request every other step
        seqs.append(llm.add_request(prompt, params, detokenize=False))
        llm.step()
        llm.step()
    while llm.has_work:
        llm.step()
    assert llm.scheduler.pool.used == 0 and llm.executor.host_sampled == 0
    for (prompt, params), seq in zip(requests, seqs):
        assert len(seq.output_ids) == params.max_new_tokens
        if params.temperature == 0:
            assert_greedy_under_own_logits(paged.session, prompt, seq.output_ids)
