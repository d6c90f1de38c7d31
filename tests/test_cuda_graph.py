"""Captured decode steps and device sampling on CUDA (runtime.graph_executor).

These run where onnxruntime has its CUDA provider (onnxruntime-gpu and an NVIDIA GPU) and are
skipped elsewhere with that reason; tests/test_graph_executor.py runs the same executor, its
buffers and the sampler graph on the CPU provider.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine, SamplingParams
from runtime.device_sampler import DeviceSampler, RowParams
from runtime.graph_executor import GraphStaticExecutor
from runtime.llm_engine import LLMEngine
from runtime.sampling import draw_uniform

pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="CUDA graphs need onnxruntime's CUDA provider: onnxruntime-gpu and an NVIDIA GPU")

SLOTS, CAPACITY = 6, 96


@pytest.fixture(scope="module")
def engine_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda-graph") / "engine"
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-llama", dtype="fp16", max_seq_len=256,
                              kv_slots=SLOTS, kv_capacity=CAPACITY, quiet=True))
    return out


def _serve(executor, prompts, params):
    engine = LLMEngine(executor, None)
    seqs = [engine.make_sequence(p, sp, detokenize=False) for p, sp in zip(prompts, params)]
    for seq in seqs[:2]:
        engine.add_sequence(seq)
    for _ in range(4):
        engine.step()
    engine.run(seqs[2:])  # later arrivals: the batch grows through several buckets
    while engine.has_work:
        engine.step()
    return [s.output_ids for s in seqs]


def test_captured_steps_serve_what_uncaptured_steps_serve(engine_path):
    """The same executor, buckets and sampler with and without capture: identical tokens,
    greedy and seeded sampling, while the batch grows and shrinks."""
    captured = Engine.load(engine_path, provider="cuda", cuda_graph=True)
    plain = Engine.load(engine_path, provider="cuda", cuda_graph=False)
    assert captured.session.cuda_graph and not plain.session.cuda_graph
    rng = np.random.default_rng(0)
    prompts = [rng.integers(10, 400, n).tolist() for n in (7, 30, 3, 12, 50)]
    params = [SamplingParams(max_new_tokens=20, ignore_eos=True),
              SamplingParams(max_new_tokens=15, temperature=0.8, seed=1, ignore_eos=True),
              SamplingParams(max_new_tokens=25, temperature=1.0, top_k=30, top_p=0.9, seed=2, ignore_eos=True),
              SamplingParams(max_new_tokens=9, ignore_eos=True),
              SamplingParams(max_new_tokens=18, temperature=0.6, seed=3, ignore_eos=True)]
    with_graphs = GraphStaticExecutor(captured.session, SLOTS, CAPACITY)
    with_graphs.capture()
    got = _serve(with_graphs, prompts, params)
    want = _serve(GraphStaticExecutor(plain.session, SLOTS, CAPACITY), prompts, params)
    assert got == want


def test_generate_ids_reuses_the_captured_executor(engine_path):
    engine = Engine.load(engine_path, provider="cuda")
    prompt = list(range(20, 40))
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    first = engine.generate_ids(prompt, params).token_ids
    executor = engine.session.executors["single"]
    assert isinstance(executor, GraphStaticExecutor)
    assert engine.generate_ids(prompt, params).token_ids == first
    assert engine.session.executors["single"] is executor
    host = Engine.load(engine_path, provider="cuda", cuda_graph=False).generate_ids(prompt, params).token_ids
    assert host == first  # device argmax over the same fp32 logits as the host's


def test_device_sampler_matches_the_cpu_sampler():
    """The sampler graph on CUDA (captured) and on the CPU pick the same tokens."""
    vocab, rows = 5000, 16
    rng = np.random.default_rng(1)
    cuda = DeviceSampler(vocab, np.float32, "cuda", {"enable_cuda_graph": "1"})
    cpu = DeviceSampler(vocab, np.float32, "cpu")
    logits = ort.OrtValue.ortvalue_from_shape_and_type((rows, 1, vocab), np.float32, "cuda", 0)
    host_logits = ort.OrtValue.ortvalue_from_shape_and_type((rows, 1, vocab), np.float32, "cpu", 0)
    cuda.bind(rows, logits)
    cpu.bind(rows, host_logits)
    for _ in range(4):
        values = (rng.normal(size=(rows, 1, vocab)) * 3).astype(np.float32)
        logits.update_inplace(values)
        host_logits.update_inplace(values)
        params = RowParams.empty(rows)
        for r in range(rows):
            params.set(r, SamplingParams(temperature=[0.0, 0.9][r % 2], top_k=[0, 40][(r // 2) % 2],
                                         top_p=[1.0, 0.8][(r // 4) % 2]), draw_uniform(rng))
        got = cuda.run(rows, rows, params, logprobs=True)
        want = cpu.run(rows, rows, params, logprobs=True)
        assert (got[0] == want[0]).mean() >= 0.9  # float rounding may move a draw across a boundary
        np.testing.assert_allclose(got[1], want[1], atol=1e-3)


@pytest.mark.real
def test_smollm2_fp16_on_cuda_gives_the_cpu_fp32_engines_greedy_tokens(tmp_path_factory, smollm2_gguf):
    """Real weights: the fp16 engine on CUDA (captured steps, device argmax) continues each
    prompt of tests/test_real_models.py as the fp32 engine does on the CPU, or departs from it
    only where the fp32 logits nearly tie (then the two choices' fp32 logits are within
    0.5% of the logit range apart). Also with our kernels (--passes custom-ops: the GEMV at
    decode, cuBLAS through our op at prefill, SwiGLU)."""
    root = tmp_path_factory.mktemp("smol-cuda")
    for name, dtype, passes in (("fp32", "fp32", None), ("fp16", "fp16", None),
                                ("fp16-custom", "fp16", "custom-ops")):
        build_engine(BuildOptions(out=root / name, source=str(smollm2_gguf), dtype=dtype, max_seq_len=256,
                                  kv_slots=2, kv_capacity=128, passes=passes, quiet=True))
    cpu = Engine.load(root / "fp32")
    for name in ("fp16", "fp16-custom"):
        assert_same_greedy_tokens_or_near_ties(cpu, Engine.load(root / name, provider="cuda"), name)


def assert_same_greedy_tokens_or_near_ties(cpu: Engine, cuda: Engine, name: str, tokens: int = 32) -> None:
    """`cuda` continues each prompt of tests/test_real_models.py as `cpu` does, or departs from it
    only where `cpu`'s logits nearly tie (within 0.5% of the logit range)."""
    from runtime.executors import probe_logits

    params = SamplingParams(max_new_tokens=tokens, ignore_eos=True)
    for prompt in ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]:
        ids = cpu.encode(prompt)
        want = cpu.generate_ids(ids, params).token_ids
        got = cuda.generate_ids(ids, params).token_ids
        if got == want:
            continue
        i = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        logits = probe_logits(cpu.session, ids + want[:i], len(ids) + i)[-1]
        gap = float(logits[want[i]] - logits[got[i]])
        assert gap <= 0.005 * float(logits.max() - logits.min()), (name, prompt, i, gap)
        print(f"{name} {prompt!r}: departs at token {i} where the CPU's logits differ by {gap:.4f}")


@pytest.mark.real
def test_smollm2_int4_through_our_kernels_on_cuda_gives_their_cpu_tokens(tmp_path_factory, smollm2_gguf):
    """Real weights, 4-bit (genai's format: symmetric blocks of 32, the lm_head too) through our
    LinearInt4 family (--passes custom-ops, its chains included): the engine on CUDA (the 4-bit
    GEMV at decode, captured; at a prompt's 5-128 tokens the tensor-core GEMM, a chain's first
    GEMM's K parts added by its norm's kernel) continues each prompt as the same engine does on the
    CPU kernels (tests/test_custom_ops_int4.py checks those against numpy), or departs only where
    those logits nearly tie."""
    from calibration import quant_config

    path = tmp_path_factory.mktemp("smol-int4") / "int4-custom"
    build_engine(BuildOptions(out=path, source=str(smollm2_gguf), dtype="fp16", max_seq_len=256, kv_slots=2,
                              kv_capacity=128, passes="custom-ops", quiet=True,
                              quant=quant_config(method="rtn", bits=4, group_size=32, lm_head_bits=4)))
    assert_same_greedy_tokens_or_near_ties(Engine.load(path), Engine.load(path, provider="cuda"), "int4-custom")


def test_batched_prefill_on_cuda_gives_each_prompt_its_own_logits(engine_path, monkeypatch):
    """Four right-padded prompts in one call on the CUDA kernels: each row's logits, and the
    decode step after them, match four separate prefills (fp16 tolerance)."""
    from runtime.executors import StaticExecutor
    from tests.test_batched_prefill import _prefill_then_decode

    session = Engine.load(engine_path, provider="cuda", cuda_graph=False).session
    calls = []
    original = StaticExecutor._prefill_rows
    monkeypatch.setattr(StaticExecutor, "_prefill_rows", lambda self, c: calls.append(len(c)) or original(self, c))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(10, 400, n).tolist() for n in (29, 24, 27, 30)]
    got = _prefill_then_decode(StaticExecutor(session, SLOTS, CAPACITY), prompts, batched=True, steps=1)
    want = _prefill_then_decode(StaticExecutor(session, SLOTS, CAPACITY), prompts, batched=False, steps=1)
    assert calls == [4]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2)


def test_rounds_of_decode_steps_give_one_requests_tokens(engine_path, monkeypatch):
    """Multi-step decoding at batch 1 (OPTIMIZER_DECODE_STEPS=4, runtime.multi_step): a session
    on a stream of the runtime's, rounds of 4 replays of the one-slot executor's graph with the
    mask rows staged; generate_ids gives the tokens single steps give, and rounds did run."""
    rng = np.random.default_rng(3)
    prompts = [rng.integers(10, 400, n).tolist() for n in (5, 40)]
    params = SamplingParams(max_new_tokens=30, ignore_eos=True)
    monkeypatch.setenv("OPTIMIZER_DECODE_STEPS", "1")  # rounds off (the default is 8)
    single = Engine.load(engine_path, provider="cuda")
    assert single.session.decode_steps == 1 and single.session.stream is None
    want = [single.generate_ids(p, params).token_ids for p in prompts]
    monkeypatch.setenv("OPTIMIZER_DECODE_STEPS", "4")
    stepped = Engine.load(engine_path, provider="cuda")
    assert stepped.session.decode_steps == 4 and stepped.session.stream is not None
    first = stepped.generate_ids(prompts[0], params)  # makes the one-slot executor
    executor = stepped.session.executors["single"]
    assert executor.decode_steps == 4
    rounds = []
    original = executor.decode_rounds
    executor.decode_rounds = lambda seqs, k: rounds.append(k) or original(seqs, k)
    got = [first.token_ids] + [stepped.generate_ids(p, params).token_ids for p in prompts[1:]]
    assert got == want and rounds and max(rounds) == 4
