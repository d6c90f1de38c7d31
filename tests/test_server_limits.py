"""The server's limits over real HTTP (runtime/server_limits.py): API keys, body size, prompt /
max_tokens / stop limits, the in-flight bound (429 at once), CORS only when enabled; the
deadline on the middleware with stand-in apps."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import contextmanager

import httpx2 as httpx
import openai
import pytest
import uvicorn

from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine
from runtime.async_engine import AsyncEngine
from runtime.server import create_app
from runtime.server_limits import LimitsMiddleware, ServerLimits

KEY = "sk-test-key-1"


@pytest.fixture(scope="module")
def engine(tmp_path_factory, smol_tokenizer_dir):
    out = tmp_path_factory.mktemp("limits") / "engine"
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-llama", tokenizer=str(smol_tokenizer_dir),
                              quiet=True, kv_slots=2, kv_capacity=96))
    return Engine.load(out)


@contextmanager
def serving(engine, limits: ServerLimits | None = None):
    """`engine` served over HTTP on a free local port (uvicorn in a thread): yields (base url,
    AsyncEngine); everything stopped afterwards."""
    server = AsyncEngine(engine.llm()).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(create_app(engine, server, "tiny", limits), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not web.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        web.should_exit = True
        thread.join(timeout=10)
        server.shutdown()


def assert_error(r: httpx.Response, status: int, needle: str) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and needle in error["message"], error
    return error


def test_api_keys(engine, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nsk-from-file\n")
    with serving(engine, ServerLimits(api_keys=(KEY,), api_key_file=keys)) as (base, _):
        body = {"model": "tiny", "prompt": "Hi", "max_tokens": 2}
        error = assert_error(httpx.post(base + "/v1/completions", json=body), 401, "API key")
        assert error["code"] == "invalid_api_key"
        r = httpx.post(base + "/v1/completions", json=body, headers={"Authorization": "Bearer sk-wrong"})
        assert_error(r, 401, "invalid API key")
        assert r.headers["www-authenticate"] == "Bearer"
        for path in ("/v1/models", "/metrics"):
            assert httpx.get(base + path).status_code == 401
            assert httpx.get(base + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert httpx.get(base + "/health").status_code == 200  # open: for load balancers
        for key in (KEY, "sk-from-file"):  # as OpenAI clients send it
            client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
            assert client.completions.create(model="tiny", prompt="Hi", max_tokens=2).usage.completion_tokens >= 1
    with serving(engine, ServerLimits(api_keys=(KEY,), metrics_need_key=False)) as (base, _):
        assert httpx.get(base + "/metrics").status_code == 200
        assert httpx.get(base + "/v1/models").status_code == 401


@pytest.mark.parametrize("body, status, needle", [
    ({"prompt": "word " * 60}, 400, "more than this server's limit of 40"),
    ({"prompt": "Hi", "max_tokens": 11}, 400, "max_tokens 11 is more than this server's limit of 10"),
    ({"prompt": "Hi", "max_completion_tokens": 50}, 400, "max_tokens 50 is more"),
    ({"prompt": "Hi", "stop": ["a", "b", "c"]}, 400, "3 stop strings"),
    ({"prompt": "Hi", "stop": "x" * 9}, 400, "a stop string of 9 characters"),
    ({"prompt": "Hi " * 3000}, 413, "larger than this server's limit of 8192 bytes"),
])
def test_request_limits(engine, body, status, needle):
    limits = ServerLimits(max_prompt_tokens=40, max_output_tokens=10, max_stop=2, max_stop_length=8,
                          max_body_bytes=8192)
    with serving(engine, limits) as (base, server):
        for path, request in (("/v1/completions", body),
                              ("/v1/chat/completions", {**{k: v for k, v in body.items() if k != "prompt"},
                                                        "messages": [{"role": "user", "content": body["prompt"]}]})):
            assert_error(httpx.post(base + path, json={"model": "tiny", **request}), status, needle)
        ok = httpx.post(base + "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 3,
                                                        "stop": ["a", "b"]})
        assert ok.status_code == 200, ok.text
        free = httpx.post(base + "/v1/chat/completions", json={"model": "tiny", "ignore_eos": True,
                                                               "messages": [{"role": "user", "content": "Hi"}]})
        assert free.json()["usage"]["completion_tokens"] == 10  # no max_tokens: the server's limit


def test_chunked_body_over_the_limit_is_refused(engine):
    with serving(engine, ServerLimits(max_body_bytes=4096)) as (base, _):
        def chunks():
            yield b'{"model": "tiny", "prompt": "'
            for _ in range(100):
                yield b"x" * 100
            yield b'"}'
        r = httpx.post(base + "/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
        assert_error(r, 413, "larger than this server's limit of 4096 bytes")


def test_requests_beyond_the_queue_limit_get_429_at_once(engine):
    """2 slots, 1 waiting: of 8 concurrent long requests 3 are admitted and 5 refused at once;
    all admitted ones finish, and the cache is empty afterwards."""
    with serving(engine, ServerLimits(max_waiting=1)) as (base, server):
        async def one(http: httpx.AsyncClient) -> int:
            r = await http.post(base + "/v1/completions", json={"model": "tiny", "prompt": "Once", "max_tokens": 80,
                                                                "ignore_eos": True})
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "rate_limit_exceeded" and r.headers["retry-after"] == "1"
            return r.status_code

        async def main() -> list[int]:
            async with httpx.AsyncClient(timeout=120) as http:
                return await asyncio.gather(*(one(http) for _ in range(8)))

        codes = asyncio.run(main())
        assert sorted(codes) == [200] * 3 + [429] * 5, codes
        assert httpx.get(base + "/health").status_code == 200
        deadline = time.monotonic() + 20
        while server.llm.sequences:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not server.llm.scheduler.pool.used


def test_no_cors_unless_enabled(engine):
    origin = {"Origin": "https://app.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    with serving(engine, ServerLimits()) as (base, _):
        assert "access-control-allow-origin" not in httpx.get(base + "/v1/models", headers=origin).headers
        assert "access-control-allow-origin" not in httpx.options(base + "/v1/completions", headers=preflight).headers
    with serving(engine, ServerLimits(cors_origins=("https://app.example",), api_keys=(KEY,))) as (base, _):
        r = httpx.options(base + "/v1/completions", headers=preflight)  # a preflight carries no key
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = httpx.get(base + "/v1/models", headers={**origin, "Authorization": f"Bearer {KEY}"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.get(base + "/v1/models", headers={"Origin": "https://evil.example",
                                                        "Authorization": f"Bearer {KEY}"})
        assert "access-control-allow-origin" not in other.headers


def test_invalid_limits_are_refused():
    from optimizer.core.errors import InputError

    with pytest.raises(InputError, match="--max-waiting must be >= 0"):
        ServerLimits(max_waiting=-1)


# -- the deadline, on the middleware alone ----------------------------------------------------
def asgi_call(app, limits: ServerLimits, body: bytes = b"{}") -> tuple[list[dict], list[str]]:
    sent, events = [], []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    middleware = LimitsMiddleware(app(events), limits, max_running=1)
    scope = {"type": "http", "path": "/v1/completions", "headers": [], "method": "POST"}
    asyncio.run(middleware(scope, receive, send))
    assert middleware.in_flight == 0
    return sent, events


def slow_app(events):
    async def app(scope, receive, send):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            events.append("cancelled")  # the server's handlers abort their sequences here
            raise
    return app


def slow_stream(events):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
    return app


def test_a_request_past_its_deadline_is_cancelled_with_408():
    sent, events = asgi_call(slow_app, ServerLimits(request_timeout=0.2))
    assert events == ["cancelled"] and sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"]["code"] == "deadline_exceeded"


def test_a_stream_past_its_deadline_ends_where_it_is():
    sent, events = asgi_call(slow_stream, ServerLimits(request_timeout=0.2))
    assert events == ["cancelled"] and sent[0]["status"] == 200
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
