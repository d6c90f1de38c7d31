"""A catalogue of bad HTTP requests: every one a 4xx with an OpenAI-shaped error, none a 5xx,
and the server healthy with its cache empty afterwards (the CLI's catalogue is
tests/test_hostile_inputs.py; random ones come from tests/test_api_fuzz.py)."""

from __future__ import annotations

import time

import httpx2 as httpx
import pytest

from runtime.server_limits import ServerLimits
from tests.test_server_limits import KEY, engine, serving  # noqa: F401  (engine: the tiny engine fixture)

C, CHAT = "/v1/completions", "/v1/chat/completions"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
USER = [{"role": "user", "content": "hi"}]

# (id, path, body: bytes or a JSON-able value, headers, expected status)
CASES = [
    ("no-key", C, {"model": "tiny", "prompt": "hi"}, {"Content-Type": "application/json"}, 401),
    ("wrong-key", C, {"model": "tiny", "prompt": "hi"}, {"Authorization": "Bearer nope"}, 401),
    ("basic-auth", C, {"model": "tiny", "prompt": "hi"}, {"Authorization": "Basic dXNlcjpwdw=="}, 401),
    ("metrics-no-key", "/metrics", None, {}, 401),
    ("body-too-large", C, {"model": "tiny", "prompt": "x" * 20000}, AUTH, 413),
    ("not-json", C, b"{nope", AUTH, 400),
    ("not-utf8", C, b"\xff\xfe\xfd", AUTH, 400),
    ("json-array", C, [1, 2], AUTH, 400),
    ("json-null", C, None, AUTH, 400),
    ("empty-body", C, b"", AUTH, 400),
    ("no-prompt", C, {"model": "tiny"}, AUTH, 400),
    ("prompt-object", C, {"model": "tiny", "prompt": {"a": 1}}, AUTH, 400),
    ("prompt-empty", C, {"model": "tiny", "prompt": ""}, AUTH, 400),
    ("prompt-lone-surrogate", C, b'{"model": "tiny", "prompt": "\\ud800abc"}', AUTH, 400),
    ("prompt-empty-echo-logprobs", C, {"model": "tiny", "prompt": "", "echo": True, "logprobs": 0}, AUTH, 400),
    ("prompt-token-negative", C, {"model": "tiny", "prompt": [1, -5]}, AUTH, 400),
    ("prompt-token-huge", C, {"model": "tiny", "prompt": [1, 10**20]}, AUTH, 400),
    ("prompt-mixed-list", C, {"model": "tiny", "prompt": [True, 1.5]}, AUTH, 400),
    ("prompt-too-many-tokens", C, {"model": "tiny", "prompt": "word " * 80}, AUTH, 400),
    ("unknown-model", C, {"model": "gpt-4", "prompt": "hi"}, AUTH, 404),
    ("max-tokens-zero", C, {"model": "tiny", "prompt": "hi", "max_tokens": 0}, AUTH, 400),
    ("max-tokens-over-limit", C, {"model": "tiny", "prompt": "hi", "max_tokens": 33}, AUTH, 400),
    ("max-tokens-string", C, {"model": "tiny", "prompt": "hi", "max_tokens": "ten"}, AUTH, 400),
    ("temperature-negative", C, {"model": "tiny", "prompt": "hi", "temperature": -1}, AUTH, 400),
    ("top-p-zero", C, {"model": "tiny", "prompt": "hi", "top_p": 0}, AUTH, 400),
    ("n-too-many", C, {"model": "tiny", "prompt": ["a"] * 33, "n": 2}, AUTH, 400),
    ("too-many-stops", C, {"model": "tiny", "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, AUTH, 400),
    ("stop-too-long", C, {"model": "tiny", "prompt": "hi", "stop": "s" * 300}, AUTH, 400),
    ("logit-bias-key", C, {"model": "tiny", "prompt": "hi", "logit_bias": {"abc": 1}}, AUTH, 400),
    ("logit-bias-value", C, {"model": "tiny", "prompt": "hi", "logit_bias": {"5": 1000}}, AUTH, 400),
    ("logprobs-too-many", C, {"model": "tiny", "prompt": "hi", "logprobs": 50}, AUTH, 400),
    ("echo-stream", C, {"model": "tiny", "prompt": "hi", "echo": True, "stream": True}, AUTH, 400),
    ("best-of", C, {"model": "tiny", "prompt": "hi", "best_of": 3}, AUTH, 400),
    ("unsupported-suffix", C, {"model": "tiny", "prompt": "hi", "suffix": "x"}, AUTH, 400),
    ("chat-no-messages", CHAT, {"model": "tiny"}, AUTH, 400),
    ("chat-empty-messages", CHAT, {"model": "tiny", "messages": []}, AUTH, 400),
    ("chat-messages-string", CHAT, {"model": "tiny", "messages": "hi"}, AUTH, 400),
    ("chat-unknown-role", CHAT, {"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, AUTH, 400),
    ("chat-no-role", CHAT, {"model": "tiny", "messages": [{"content": "hi"}]}, AUTH, 400),
    ("chat-top-logprobs-alone", CHAT, {"model": "tiny", "messages": USER, "top_logprobs": 2}, AUTH, 400),
    ("chat-tools", CHAT, {"model": "tiny", "messages": USER, "tools": [{"type": "function"}]}, AUTH, 400),
    ("chat-surrogate", CHAT, b'{"model": "tiny", "messages": [{"role": "user", "content": "\\udfff"}]}', AUTH, 400),
    ("unknown-path", "/v1/embeddings", {"model": "tiny", "input": "hi"}, AUTH, 404),
    ("wrong-method", "/v1/models", None, AUTH, 405),
]


@pytest.fixture(scope="module")
def served(engine):  # noqa: F811
    limits = ServerLimits(api_keys=(KEY,), max_body_bytes=16384, max_prompt_tokens=64, max_output_tokens=32)
    with serving(engine, limits) as running:
        yield running


@pytest.mark.parametrize("name, path, body, headers, status", CASES, ids=[c[0] for c in CASES])
def test_bad_request(served, name, path, body, headers, status):
    base, _ = served
    if path == "/metrics" or (path == "/v1/models" and name == "wrong-method"):
        r = httpx.request("POST" if name == "wrong-method" else "GET", base + path, headers=headers)
    else:
        content = body if isinstance(body, bytes) else httpx_json(body)
        r = httpx.post(base + path, content=content, headers={"Content-Type": "application/json", **headers})
    assert r.status_code == status, r.text
    if path.startswith("/v1/c") or path == "/metrics":
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], error


def httpx_json(value) -> bytes:
    import json

    return json.dumps(value).encode()


def test_the_server_is_healthy_and_empty_after_the_catalogue(served):
    base, server = served
    assert len(CASES) >= 40
    deadline = time.monotonic() + 20
    while server.llm.sequences or server.llm.scheduler.pool.used:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert httpx.get(base + "/health").status_code == 200 and not server.errors
