"""Ray Serve replicas (runtime.ray_serve): the pure parts, then a local cluster (num_cpus=2, no
dashboard) serving tiny random engines: 2 replicas x 1 thread through Ray's HTTP proxy, one
replica killed mid-request, then two engines behind one endpoint routed by model."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from optimizer.core.errors import InputError
from optimizer.pipeline import BuildOptions, build_engine
from runtime.ray_serve import (EngineSpec, ReplicaOptions, check_specs, join_metrics, parse_engine, relabel_metrics,
                               require_ray, weighted_route)

CAPACITY = 96


# -- pure parts ---------------------------------------------------------------------------------
def test_parse_engine():
    assert parse_engine("small=engines/smol") == EngineSpec("small", "engines/smol", 1.0)
    assert parse_engine("small=engines/smol:3") == EngineSpec("small", "engines/smol", 3.0)
    assert parse_engine("a=C:/x/y") == EngineSpec("a", "C:/x/y", 1.0)  # a colon that is no weight
    for bad in ("engines/smol", "=x", "a=", "a=p:0", "a=p:-2"):
        with pytest.raises(InputError):
            parse_engine(bad)


def test_weighted_route_splits_by_weight():
    engines = [EngineSpec("m", "a", 1.0), EngineSpec("m", "b", 3.0)]
    rng = random.Random(0)
    counts = Counter(weighted_route("m", engines, {}, rng).path for _ in range(4000))
    assert 0.70 < counts["b"] / 4000 < 0.80 and counts["a"] + counts["b"] == 4000


def test_metrics_joined_and_labelled():
    text = ('# HELP x_total Things\n# TYPE x_total counter\nx_total{reason="stop"} 2.0\n'
            '# HELP g A gauge\n# TYPE g gauge\ng 0.5\n')
    assert relabel_metrics(text, {"replica": "r1"}) == ['x_total{replica="r1",reason="stop"} 2.0', 'g{replica="r1"} 0.5']
    joined = join_metrics([({"replica": "r1"}, text), ({"replica": "r2"}, text)]).splitlines()
    assert joined.count("# TYPE g gauge") == 1
    assert joined.index('g{replica="r2"} 0.5') == joined.index('g{replica="r1"} 0.5') + 1


def test_bad_configurations_refused(tmp_path):
    with pytest.raises(InputError, match="no manifest.json"):
        check_specs([EngineSpec("a", str(tmp_path))], ReplicaOptions())
    (tmp_path / "manifest.json").write_text("{}")
    check_specs([EngineSpec("a", str(tmp_path))], ReplicaOptions())
    for options, what in ((ReplicaOptions(replicas=0), "--replicas"), (ReplicaOptions(min_replicas=1), "both"),
                          (ReplicaOptions(min_replicas=3, max_replicas=2), "min <= max")):
        with pytest.raises(InputError, match=what):
            check_specs([EngineSpec("a", str(tmp_path))], options)
    (tmp_path / "manifest.json").write_text('{"gate": {"passed": false}}')
    with pytest.raises(InputError, match="--allow-failed-gate"):
        check_specs([EngineSpec("a", str(tmp_path))], ReplicaOptions())


def test_serve_run_builder_arguments(tmp_path):
    pytest.importorskip("ray")
    from runtime.ray_serve import build

    (tmp_path / "manifest.json").write_text("{}")
    app = build({"engines": f"a={tmp_path},b={tmp_path}:2", "replicas": "2", "prefix_caching": "false"})
    assert type(app).__name__ == "Application"
    with pytest.raises(InputError, match="unknown argument.*'replica'"):
        build({"engines": f"a={tmp_path}", "replica": "2"})


def test_cli_refusals(tmp_path):
    from click.testing import CliRunner

    from optimizer.cli import main

    runner = CliRunner()
    r = runner.invoke(main, ["serve"])
    assert r.exit_code != 0 and "ENGINE_DIR" in str(r.output) + str(r.exception)
    r = runner.invoke(main, ["serve", str(tmp_path), "--replicas", "2", "--speculative", "ngram"])
    assert r.exit_code != 0 and "not offered with Ray Serve" in str(r.output) + str(r.exception)
    r = runner.invoke(main, ["serve", "--engine", "a", "--replicas", "2"])
    assert r.exit_code != 0 and "NAME=PATH" in str(r.output) + str(r.exception)


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError, match=r"pip install .*serve-ray"):
        require_ray()


# -- on a local Ray cluster ---------------------------------------------------------------------
def port_outside_ray_ranges() -> int:
    """A free port that neither the kernel's ephemeral range (where Ray's own gRPC servers bind port 0)
    nor Ray's worker ports (10002-19999) can take between our choice and Serve's bind: a port
    taken from port 0 here once collided with one of Ray's processes (CI, 'Failed to bind')."""
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ranges.read_text().split()[0]) if ranges.exists() else 32768
    candidates = list(range(20000, min(low, 32768)))
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32767 for Ray Serve's proxy")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, smol_tokenizer_dir):
    ray = pytest.importorskip("ray")  # in the test extra; absent only where installed without it
    from ray import serve

    engines = {}
    for name in ("a", "b"):
        out = tmp_path_factory.mktemp("ray") / name
        build_engine(BuildOptions(out=out, random_weights=True, config="tiny-llama", tokenizer=str(smol_tokenizer_dir),
                                  quiet=True, kv_slots=4, kv_capacity=CAPACITY))
        engines[name] = out
    port = port_outside_ray_ranges()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}", engines
    finally:
        serve.shutdown()
        ray.shutdown()


def deploy(engines, limits=None, **options):
    from ray import serve

    from runtime.ray_serve import build_application

    serve.run(build_application(engines, ReplicaOptions(**options), limits), name="optimizer", route_prefix="/")
    return serve.get_app_handle("optimizer")


def replica_states(deployment: str, expect: int, timeout: float = 60) -> list[dict]:
    """Every live replica's state, from the metrics board's posts (each replica posts once a second)."""
    import ray

    from runtime.ray_serve import METRICS_BOARD

    board = ray.get_actor(METRICS_BOARD, namespace="optimizer-serve")
    deadline = time.monotonic() + timeout
    while True:
        posts = [labels for labels, _ in ray.get(board.read.remote()) if labels["engine"] == deployment]
        if len(posts) >= expect:
            return posts
        assert time.monotonic() < deadline, f"{deployment}: {len(posts)} replicas posting, expected {expect}"
        time.sleep(0.2)


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_two_replicas_serve_the_api_and_survive_a_killed_replica(cluster):
    from ray import serve

    base, engines = cluster
    deploy([EngineSpec("tiny", str(engines["a"]))], replicas=2, threads=1)
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(base + "/health").json() == {"status": "ok", "engines": {"tiny": "ok"}}

    whole = client.completions.create(model="tiny", prompt="Hello there", max_tokens=10, temperature=0,
                                      extra_body={"ignore_eos": True})
    pieces = client.completions.create(model="tiny", prompt="Hello there", max_tokens=10, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in pieces) == whole.choices[0].text and whole.usage.completion_tokens == 10
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                          stream=True)
    assert [c for c in chat][-1].choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.NotFoundError, match="serves: tiny"):
        client.completions.create(model="other", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError):  # the replica's own validation, relayed
        client.completions.create(model="tiny", prompt="x", max_tokens=10_000)

    posts = replica_states("engine0-tiny", 2)
    assert len({p["replica"] for p in posts}) == 2

    # Kill one replica while requests run on both: each ends (answered, retried, or a clear error), none hangs.
    handle = serve.get_deployment_handle("engine0-tiny", "optimizer")
    pids = {handle.state.remote().result()["pid"] for _ in range(20)}
    assert len(pids) == 2

    async def load() -> list[str]:
        async with httpx.AsyncClient(timeout=120) as http:
            async def one(i: int) -> str:
                body = {"model": "tiny", "prompt": f"Story {i}", "max_tokens": 60, "temperature": 0,
                        "ignore_eos": True, "stream": i % 2 == 0}
                if not body["stream"]:
                    r = await http.post(base + "/v1/completions", json=body)
                    return "ok" if r.status_code == 200 else f"http {r.status_code}: {r.json()['error']['code']}"
                async with http.stream("POST", base + "/v1/completions", json=body) as r:
                    lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
                if r.status_code != 200:
                    return f"http {r.status_code}"
                if lines[-1] == "data: [DONE]":
                    return "ok"
                assert '"replica_died"' in lines[-1], lines[-1]
                return "stream error"

            async def kill() -> None:
                await asyncio.sleep(1.0)
                os.kill(sorted(pids)[0], signal.SIGKILL)

            results = await asyncio.gather(*[one(i) for i in range(12)], kill())
            return results[:-1]

    outcomes = Counter(asyncio.run(asyncio.wait_for(load(), 180)))
    assert sum(outcomes.values()) == 12 and set(outcomes) <= {"ok", "stream error", "http 503: replica_unavailable"}
    assert outcomes["ok"] >= 1, outcomes

    # Ray starts a new replica; both serve, and no cache is held anywhere once all is done.
    deadline = time.monotonic() + 90
    while True:
        try:
            states = [handle.state.remote().result(timeout_s=10) for _ in range(12)]
        except Exception:  # noqa: BLE001 - a call that met the dead replica before Ray noticed
            states = []
        if len({s["pid"] for s in states}) == 2 and sorted(pids)[0] not in {s["pid"] for s in states}:
            break
        assert time.monotonic() < deadline, "the killed replica was not replaced"
        time.sleep(0.5)
    assert all(s["cache_used"] == 0 and s["sequences"] == 0 for s in states)
    again = client.completions.create(model="tiny", prompt="Hello there", max_tokens=10, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert again.choices[0].text == whole.choices[0].text


def test_two_engines_behind_one_endpoint(cluster):
    base, engines = cluster
    from runtime.server_limits import ServerLimits

    deploy([EngineSpec("small", str(engines["a"])), EngineSpec("big", str(engines["b"]))],
           ServerLimits(api_keys=("k1",)), replicas=1, threads=1)
    for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/completions")):
        r = httpx.request(method, base + path, json={"model": "medium", "prompt": "x"} if method == "POST" else None)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (path, r.text)
    assert httpx.get(base + "/health").status_code == 200  # never needs a key
    client = openai.OpenAI(base_url=base + "/v1", api_key="k1", max_retries=0)
    assert sorted(m.id for m in client.models.list().data) == ["big", "small"]
    for model, n in (("small", 3), ("big", 5)):
        for _ in range(n):
            r = client.completions.create(model=model, prompt="Hi", max_tokens=2, extra_body={"ignore_eos": True})
            assert r.model == model
    with pytest.raises(openai.NotFoundError, match="serves: small, big"):
        client.completions.create(model="medium", prompt="x", max_tokens=1)
    deadline = time.monotonic() + 30
    while True:  # the joined /metrics: each engine's own requests, labelled with its model
        text = httpx.get(base + "/metrics", headers={"Authorization": "Bearer k1"}).text
        counts = {m: metric_sum(text, "optimizer_requests_total", model=m) for m in ("small", "big")}
        if counts == {"small": 3.0, "big": 5.0}:
            break
        assert time.monotonic() < deadline, counts
        time.sleep(0.3)
    assert text.count("# TYPE optimizer_requests_total counter") == 1 and 'replica="' in text
