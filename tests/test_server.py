"""The OpenAI-compatible server over real HTTP on localhost, with the openai client library."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time

import httpx2 as httpx  # the openai client's HTTP library
import openai
import pytest
import uvicorn

from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine
from runtime.async_engine import AsyncEngine
from runtime.server import create_app

CAPACITY = 96


@pytest.fixture(scope="module")
def served(tmp_path_factory, smol_tokenizer_dir):
    out = tmp_path_factory.mktemp("srv") / "engine"
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-llama", tokenizer=str(smol_tokenizer_dir),
                              quiet=True, kv_slots=4, kv_capacity=CAPACITY))
    engine = Engine.load(out)
    server = AsyncEngine(engine.llm()).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(create_app(engine, server, "tiny"), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not web.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", server
    web.should_exit = True
    thread.join(timeout=10)
    server.shutdown()


@pytest.fixture()
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0)


def wait_until(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def wait_idle(server: AsyncEngine) -> None:
    wait_until(lambda: not server.llm.scheduler.pool.used and not server.llm.sequences, "cache space was not freed")


def test_completion_streamed_equals_whole(client):
    whole = client.completions.create(model="tiny", prompt="Hello there", max_tokens=12, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 12
    assert whole.usage.prompt_tokens == 2 and whole.object == "text_completion"
    pieces = [c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Hello there", max_tokens=12, temperature=0, stream=True,
        extra_body={"ignore_eos": True})]
    assert "".join(pieces) == whole.choices[0].text


def test_chat_completion_and_stream(client):
    messages = [{"role": "user", "content": "Say something."}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert whole.choices[0].message.role == "assistant" and whole.usage.completion_tokens == 8
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_strings_min_tokens_and_seeded_sampling(client):
    base = client.completions.create(model="tiny", prompt="Once upon", max_tokens=24, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = base[len(base) // 2:len(base) // 2 + 3]
    cut = client.completions.create(model="tiny", prompt="Once upon", max_tokens=24, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True})
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == base[:base.index(stop)]
    a, b = (client.completions.create(model="tiny", prompt="Once upon", max_tokens=10, temperature=0.8, seed=3,
                                      extra_body={"top_k": 20, "min_tokens": 10}).choices[0].text for _ in range(2))
    assert a == b


@pytest.mark.parametrize("body, message", [
    ({"prompt": "Hello", "max_tokens": CAPACITY + 5}, "exceeds this server's limit"),
    ({"prompt": "Hello", "n": 2}, "only n = 1"),
    ({"prompt": "Hello", "temperature": -1}, "temperature"),
    ({"prompt": "Hello", "logprobs": 3}, "logprobs"),
    ({"max_tokens": 3}, "prompt"),
])
def test_bad_requests_get_a_clear_400(served, body, message):
    r = httpx.post(served[0] + "/v1/completions", json={"model": "tiny", **body})
    assert r.status_code == 400 and message in r.json()["error"]["message"]
    r = httpx.post(served[0] + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(served[0] + "/v1/chat/completions", json={"model": "tiny", "messages": []})
    assert r.status_code == 400


def test_health_and_metrics(served, client):
    client.completions.create(model="tiny", prompt="Hi", max_tokens=3, temperature=0)
    assert httpx.get(served[0] + "/health").json() == {"status": "ok"}
    text = httpx.get(served[0] + "/metrics").text
    for name in ("optimizer_queue_length", "optimizer_running_requests", "optimizer_kv_cache_usage_ratio",
                 "optimizer_output_tokens_per_second", "optimizer_time_to_first_token_seconds_bucket",
                 "optimizer_time_per_output_token_seconds_bucket", 'optimizer_requests_total{finish_reason="length"}'):
        assert name in text, name


def test_a_client_that_disconnects_frees_its_slot(served, monkeypatch):
    base, server = served
    executor = server.llm.executor
    decode = executor.decode

    def slow_decode(seqs):  # the tiny model is too fast to hang up on: 20 ms a step
        time.sleep(0.02)
        return decode(seqs)

    monkeypatch.setattr(executor, "decode", slow_decode)
    aborts = server.metrics.requests.labels(finish_reason="abort")._value.get
    before = aborts()
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", base + "/v1/completions",
                         json={"model": "tiny", "prompt": "Tell me", "max_tokens": 80, "stream": True,
                               "ignore_eos": True}) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            assert json.loads(first[5:])["choices"][0]["finish_reason"] is None
    wait_until(lambda: aborts() == before + 1, "the streaming request was not aborted")
    wait_idle(server)
    with httpx.Client(timeout=30) as http:  # a non-streaming request whose client gives up
        with pytest.raises(httpx.ReadTimeout):
            http.post(base + "/v1/completions", json={"model": "tiny", "prompt": "Tell me", "max_tokens": 90,
                                                      "ignore_eos": True}, timeout=0.3)
    # under load the server may see the request late: wait for its abort, not just an idle cache
    wait_until(lambda: aborts() == before + 2, "the non-streaming request was not aborted")
    wait_idle(server)


def test_concurrent_requests_with_random_aborts_leak_nothing(served):
    """A small soak: many clients at once, some hanging up early; all others get answers,
    and the cache is empty and the server healthy afterwards."""
    base, server = served
    rng = random.Random(0)

    async def one(http: httpx.AsyncClient, i: int) -> str:
        body = {"model": "tiny", "prompt": f"Request {i}:", "max_tokens": rng.randint(1, 40),
                "temperature": 0, "ignore_eos": True, "stream": i % 2 == 0}
        if rng.random() < 0.3:
            try:
                await asyncio.wait_for(http.post(base + "/v1/completions", json=body), rng.uniform(0.01, 0.3))
            except asyncio.TimeoutError:
                return "aborted"
            return "done early"
        r = await http.post(base + "/v1/completions", json=body)
        assert r.status_code == 200, r.text
        return "done"

    async def main() -> list[str]:
        async with httpx.AsyncClient(timeout=120) as http:
            return await asyncio.gather(*(one(http, i) for i in range(60)))

    outcomes = asyncio.run(main())
    assert outcomes.count("done") >= 30
    wait_idle(server)
    server.llm.scheduler.pool.check()
    assert httpx.get(base + "/health").status_code == 200
    assert not server.errors


def test_usage_reports_cached_prompt_tokens_and_metrics_the_hit_rate(served, client):
    prompt = "You are a terse assistant. Answer in one word, never more, whatever the question is. Q:"
    first = client.completions.create(model="tiny", prompt=prompt + " sky?", max_tokens=2, temperature=0)
    second = client.completions.create(model="tiny", prompt=prompt + " sea?", max_tokens=2, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens < first.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens >= 16
    text = httpx.get(served[0] + "/metrics").text
    rate = float(next(line.split()[1] for line in text.splitlines()
                      if line.startswith("optimizer_prefix_cache_hit_rate ")))
    cached = float(next(line.split()[1] for line in text.splitlines()
                        if line.startswith("optimizer_prefix_cache_cached_tokens_total ")))
    assert 0 < rate < 1 and cached >= 16
