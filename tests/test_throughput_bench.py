"""benchmarks/throughput.py on the CPU: its workloads, and a run of a tiny engine through it
that produces every request's tokens (the GPU session times real shapes with it)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from optimizer.pipeline import BuildOptions, build_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import throughput  # noqa: E402


def test_fixed_requests_have_the_asked_lengths_and_arrivals():
    reqs = throughput.fixed_requests(20, 16, 8)
    assert [len(r.prompt) for r in reqs] == [16] * 20 and {r.output_tokens for r in reqs} == {8}
    assert all(r.arrival == 0.0 for r in reqs)
    poisson = throughput.fixed_requests(2000, 4, 2, "poisson:50")
    times = np.array([r.arrival for r in poisson])
    assert (np.diff(times) >= 0).all()
    assert 2000 / times[-1] == pytest.approx(50, rel=0.1)  # the asked rate, on average
    assert [r.prompt for r in poisson[:3]] == [r.prompt for r in throughput.fixed_requests(3, 4, 2)]
    with pytest.raises(ValueError, match="poisson:RATE"):
        throughput.arrival_times(3, "uniform:3")


def test_a_run_produces_every_requests_tokens(tmp_path):
    out = tmp_path / "engine"
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-llama", kv_slots=4, kv_capacity=64,
                              quiet=True))
    workloads = [(a, throughput.fixed_requests(10, 12, 5, a)) for a in ("poisson:200", "t0")]
    records = throughput.run_ours(out, workloads, max_batch=4, provider="cpu")  # one engine, two loops
    assert [r["arrival"] for r in records] == ["poisson:200", "t0"]
    for record in records:
        assert record["incomplete_requests"] == 0 and record["output_tokens"] == 50
        assert record["requests"] == 10 and record["max_batch"] == 4 and record["kv_layout"] == "static"
        assert record["ttft_s_p50"] > 0 and record["tpot_s_p99"] >= record["tpot_s_p50"] > 0
        assert "gpu_used_gb_after" not in record  # no CUDA here


def test_a_sampled_run_samples_every_request_by_its_seed(tmp_path):
    """--temperature: every request samples, seeded by its index, so two runs agree and
    differ from greedy; the record says so and counts every token."""
    from optimizer.replay import replay
    from runtime import Engine

    out = tmp_path / "engine"
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-llama", kv_slots=4, kv_capacity=64,
                              quiet=True))
    requests = throughput.fixed_requests(6, 12, 8)
    engine = Engine.load(out)
    sampled, again, greedy = (replay(engine, requests, max_batch=4, temperature=t)[0]["outputs"]
                              for t in (1.0, 1.0, 0.0))
    assert sampled == again and sampled != greedy
    record, = throughput.run_ours(out, [("t0", requests)], max_batch=4, provider="cpu", temperature=1.0)
    assert record["incomplete_requests"] == 0 and record["output_tokens"] == 48


def test_replay_times_the_workload_again_on_the_same_llm_engine(tmp_path):
    """replay(llm=...): the workload again on an idle LLMEngine (benchmarks/gpu_decode.py's
    repeated concurrent runs) gives the same greedy outputs; a busy one is refused."""
    from optimizer.replay import replay
    from runtime import Engine, SamplingParams

    out = tmp_path / "engine"
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-llama", kv_slots=4, kv_capacity=64,
                              quiet=True))
    requests = throughput.fixed_requests(6, 12, 8)
    engine = Engine.load(out)
    first, llm = replay(engine, requests, max_batch=4)
    again, same = replay(engine, requests, llm=llm)
    assert same is llm and again["outputs"] == first["outputs"] and again["output_tokens"] == 48
    llm.add_request([5, 6, 7], SamplingParams(max_new_tokens=2), detokenize=False)
    with pytest.raises(ValueError, match="idle"):
        replay(engine, requests, llm=llm)
