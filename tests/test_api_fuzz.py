"""The HTTP API fuzzed from its own OpenAPI document (tests/api_fuzz.py): every answer below
500 and OpenAI-shaped when an error, none hanging; afterwards the server is healthy, its cache
empty and its engine loop without errors. A bounded number of cases here (the 2,000-request
run is benchmarks/reliability.py)."""

from __future__ import annotations

import time

import httpx2 as httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.api_fuzz import request_bodies
from tests.test_server_limits import serving
from runtime.server_limits import ServerLimits

CASES = 100  # per endpoint: about 15 s each on the 2-core machine


@pytest.fixture(scope="module")
def served(engine):
    with serving(engine, ServerLimits(max_body_bytes=64 << 10)) as (base, server):
        yield base, server, httpx.get(base + "/openapi.json").json()


from tests.test_server_limits import engine  # noqa: E402,F401  (the tiny engine fixture)


def check_answer(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        error = r.json()["error"]
        assert isinstance(error["message"], str) and error["message"], error


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_fuzzed_requests_get_answers_below_500(served, path):
    base, server, openapi = served
    seen: dict[int, int] = {}

    @settings(max_examples=CASES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(body=request_bodies(openapi, path))
    def one(body: bytes) -> None:
        r = httpx.post(base + path, content=body, headers={"Content-Type": "application/json"}, timeout=60)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        check_answer(r)

    one()
    # the valid bodies do get through: a plain one always, and some of the generated ones (most
    # schema-valid bodies still break a rule the schema cannot state: one structured-output
    # constraint, best_of = n, top_logprobs with logprobs, the token limit; how many depends on
    # the examples hypothesis draws)
    plain = {"model": "tiny", "max_tokens": 2} | (
        {"prompt": "Hello"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "Hello"}]})
    assert httpx.post(base + path, json=plain, timeout=60).status_code == 200
    assert seen.get(200, 0) >= CASES // 20, seen
    assert sum(n for code, n in seen.items() if 400 <= code < 500) >= CASES // 10, seen
    deadline = time.monotonic() + 30
    while server.llm.sequences or server.llm.scheduler.pool.used:
        assert time.monotonic() < deadline, "the cache was not freed"
        time.sleep(0.05)
    server.llm.scheduler.pool.check()
    assert httpx.get(base + "/health").status_code == 200 and not server.errors


@settings(max_examples=40, deadline=None, database=None, derandomize=True)
@given(path=st.sampled_from(["/v1/models", "/health", "/metrics", "/v1/completions", "/nope", "/v1/../health"]),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
def test_other_methods_and_paths_get_4xx_or_200(served, path, method):
    r = httpx.request(method, served[0] + path, timeout=30)
    assert r.status_code < 500, (method, path, r.text)
