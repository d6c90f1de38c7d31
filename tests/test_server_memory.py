"""What a served request leaves behind: nothing that grows with the number of requests.

Rounds of the same mix of requests (plain, streamed, n choices, echo with logprobs, chat with
logprobs, stop strings, structured output, refused ones, clients hanging up mid-stream)
against a live server; after each round, once idle: no request state left in the engine and
no kind of Python object more numerous than after the round before by half as many as there
were requests (a leak of one object per request shows: an injected one failed it). Plus the per-request structures that are bounded by design: the metrics'
rate window, the kept tracebacks of failed steps, the echo pass refused before it runs."""

from __future__ import annotations

import asyncio
import collections
import gc
import time

import httpx2 as httpx

import runtime.server as server_module
from runtime.async_engine import KEPT_ERRORS, AsyncEngine
from runtime.metrics import ServingMetrics
from runtime.sequence import Sequence
from tests.test_server_limits import engine, serving  # noqa: F401  (engine: the tiny engine fixture, 2 slots x 96)

ROUND = 3  # repeats of the mix per round: 36 requests


def mix(i: int) -> list[tuple[str, dict, bool]]:
    """(path, body, hang up after the first chunk) of one round's requests."""
    c, chat = "/v1/completions", "/v1/chat/completions"
    user = [{"role": "user", "content": f"Say something {i}"}]
    return [(c, {"model": "tiny", "prompt": f"Hello {i}", "max_tokens": 4}, False),
            (c, {"model": "tiny", "prompt": f"Count {i}", "max_tokens": 8, "stream": True}, False),
            (c, {"model": "tiny", "prompt": f"Pick {i}", "max_tokens": 3, "n": 3, "temperature": 0.9, "seed": i}, False),
            (c, {"model": "tiny", "prompt": f"Echo this {i}", "max_tokens": 2, "echo": True, "logprobs": 3}, False),
            (c, {"model": "tiny", "prompt": f"Stop {i}", "max_tokens": 6, "stop": ["e", "xyz"]}, False),
            (chat, {"model": "tiny", "messages": user, "max_tokens": 4, "logprobs": True, "top_logprobs": 2}, False),
            (chat, {"model": "tiny", "messages": user, "max_tokens": 6, "response_format": {"type": "json_object"}},
             False),
            (c, {"model": "tiny", "prompt": f"Long {i}", "max_tokens": 60, "ignore_eos": True, "stream": True}, True),
            (c, {"model": "tiny", "prompt": list(range(1, 300)), "echo": True, "logprobs": 2}, False),  # 400
            (c, {"model": "other", "prompt": "x"}, False),  # 404
            (c, {"model": "tiny", "prompt": "x", "stop": ["s"] * 9}, False),  # 400: too many stop strings
            (chat, {"model": "tiny", "messages": []}, False)]  # 400


async def one_round(base: str, first: int) -> collections.Counter:
    async def send(http: httpx.AsyncClient, path: str, body: dict, hang_up: bool) -> int:
        if not body.get("stream"):
            return (await http.post(base + path, json=body)).status_code
        async with http.stream("POST", base + path, json=body) as r:
            async for line in r.aiter_lines():
                if hang_up and line.startswith("data: {"):
                    break  # leaving the block closes the connection: the server aborts the request
            return r.status_code

    async with httpx.AsyncClient(timeout=120) as http:
        codes = await asyncio.gather(*(send(http, *request) for i in range(first, first + ROUND)
                                       for request in mix(i)))
    return collections.Counter(codes)


def live_objects() -> collections.Counter:
    """Live objects by type, once the server has dropped the round's connections (the client
    closed them; the server's event loop lets go of each a moment later)."""
    deadline = time.monotonic() + 30
    while True:
        gc.collect()
        counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        if not counts["RequestResponseCycle"] or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def wait_idle(server: AsyncEngine) -> None:
    deadline = time.monotonic() + 30
    while server.llm.sequences or server.llm.scheduler.has_work or server.llm.scheduler.pool.used:
        assert time.monotonic() < deadline, "the server did not become idle"
        time.sleep(0.05)


def test_requests_leave_nothing_that_grows_with_their_number(engine):  # noqa: F811
    with serving(engine) as (base, server):
        counts = []
        for r in range(4):
            codes = asyncio.run(one_round(base, r * ROUND))
            assert codes == {200: 8 * ROUND, 400: 3 * ROUND, 404: ROUND}, codes
            wait_idle(server)
            llm = server.llm
            assert not llm.sequences and not llm._callbacks and not llm.scheduler.waiting \
                and not llm.scheduler.running, "request state left in the engine"
            counts.append(live_objects())
            assert not any(type(o) is Sequence for o in gc.get_objects()), "a finished request is still referenced"
        assert not server.errors
    requests = len(mix(0)) * ROUND
    # rounds 0-1 warm up (imports, compiled templates and grammars, pools); from then on no kind of
    # object may grow by anything like one per request
    for before, after in zip(counts[1:], counts[2:]):
        grown = {kind: after[kind] - before[kind] for kind in after if after[kind] - before[kind] >= requests // 2}
        assert not grown, f"objects that grow with the requests ({requests} a round): {grown}"


def test_a_prompt_past_the_limits_is_refused_before_its_echo_pass(engine, monkeypatch):  # noqa: F811
    calls = []
    window_logits = server_module.window_logits
    monkeypatch.setattr(server_module, "window_logits", lambda *a: calls.append(a) or window_logits(*a))
    with serving(engine) as (base, _):
        for n in (200, 5000):  # beyond the engine's 96 positions; 5,000 beyond its rotary table too
            r = httpx.post(base + "/v1/completions", json={"model": "tiny", "prompt": list(range(1, n)),
                                                           "echo": True, "logprobs": 1, "max_tokens": 1}, timeout=60)
            assert r.status_code == 400 and "tokens" in r.json()["error"]["message"], r.text
        assert not calls, "the prompt's logits were computed for a request that was refused"
        r = httpx.post(base + "/v1/completions", json={"model": "tiny", "prompt": [5, 6, 7], "echo": True,
                                                       "logprobs": 1, "max_tokens": 1}, timeout=60)
        assert r.status_code == 200 and len(calls) == 1, r.text
        assert len(r.json()["choices"][0]["logprobs"]["tokens"]) == 4  # the 3 prompt tokens and the new one


def test_the_token_rate_window_stays_bounded_without_scrapes(monkeypatch):
    clock = iter(range(10**6))
    monkeypatch.setattr("runtime.metrics.time.monotonic", lambda: float(next(clock)))
    metrics = ServingMetrics(window_seconds=10)
    for _ in range(1000):  # a step per second for 1,000 s, nobody reading /metrics
        metrics.observe_tokens(4, 0)
    assert len(metrics._recent) <= 11


def test_failed_steps_keep_the_newest_tracebacks_and_count_all(engine):  # noqa: F811
    server = AsyncEngine(engine.llm())  # not started: steps are driven here

    def fail() -> None:
        raise RuntimeError("a step that fails")

    server.llm.step = fail
    for _ in range(3 * KEPT_ERRORS):
        server._step()
    assert len(server.errors) == KEPT_ERRORS and server.error_count == 3 * KEPT_ERRORS
    assert "a step that fails" in server.errors[-1]


def test_the_idle_loop_gives_free_memory_back_after_work(engine):  # noqa: F811
    with serving(engine) as (base, server):
        before = server.trims
        assert httpx.post(base + "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2},
                          timeout=60).status_code == 200
        deadline = time.monotonic() + 30
        while server.trims == before:
            assert time.monotonic() < deadline, "the idle engine loop never trimmed"
            time.sleep(0.05)
        trims = server.trims
        time.sleep(0.5)  # idle without new work: no more trims
        assert server.trims == trims
