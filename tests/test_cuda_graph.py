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
