"""The OpenAI-compatible server over real HTTP on localhost, with the openai client library."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time

import httpx2 as httpx  # the openai client's HTTP library
import openai
import pytest
import numpy as np

from runtime import Engine
from runtime.async_engine import AsyncEngine
from runtime.executors import probe_logits
from runtime.penalties import log_softmax
from tests.conftest import SERVED_CAPACITY
from tests.test_server_limits import serving

CAPACITY = SERVED_CAPACITY


@pytest.fixture(scope="module")
def served(served_engine_dir):
    with serving(Engine.load(served_engine_dir)) as (base, server):
        yield base, server


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
    ({"prompt": "Hello", "n": 65}, "n"),
    ({"prompt": ["a"] * 33, "n": 2}, "exceeds this server's limit of 64"),
    ({"prompt": "Hello", "temperature": -1}, "temperature"),
    ({"prompt": "Hello", "logprobs": 21}, "logprobs"),
    ({"prompt": "Hello", "presence_penalty": 2.5}, "presence_penalty"),
    ({"prompt": "Hello", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "Hello", "logit_bias": {"x": 1}}, "logit_bias keys are token ids"),
    ({"prompt": "Hello", "logit_bias": {"99999999": 1}}, "outside the vocabulary"),
    ({"prompt": "Hello", "logit_bias": {"5": 101}}, "logit_bias values"),
    ({"prompt": [[1, 2], [99999999]]}, "prompt token 99999999 is outside the vocabulary"),
    ({"prompt": []}, "prompt is empty"),
    ({"prompt": "Hello", "suffix": "!"}, "suffix is not supported"),
    ({"prompt": "Hello", "best_of": 3}, "best_of"),
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


def test_unknown_or_missing_model_and_bad_roles(served):
    base = served[0]
    r = httpx.post(base + "/v1/completions", json={"model": "gpt-4o", "prompt": "Hi", "max_tokens": 2})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "'gpt-4o'" in r.json()["error"]["message"] and "tiny" in r.json()["error"]["message"]
    r = httpx.post(base + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 400 and "model is required" in r.json()["error"]["message"]
    r = httpx.post(base + "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "wizard",
                                                                                       "content": "Hi"}]})
    assert r.status_code == 400 and "messages.0.role" in r.json()["error"]["message"]
    for field, value in (("tools", [{"type": "function", "function": {"name": "f"}}]), ("tool_choice", "auto"),
                         ("audio", {"voice": "x"})):
        r = httpx.post(base + "/v1/chat/completions", json={"model": "tiny", field: value,
                                                            "messages": [{"role": "user", "content": "Hi"}]})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith(f"{field} is not supported")
    r = httpx.post(base + "/v1/chat/completions", json={"model": "tiny", "top_logprobs": 2,
                                                        "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 400 and "top_logprobs needs logprobs" in r.json()["error"]["message"]


def test_token_id_prompts_lists_of_prompts_and_n(served, client):
    _, server = served
    ids = server.llm.tokenizer.encode("Hello there")
    text = client.completions.create(model="tiny", prompt="Hello there", max_tokens=6, temperature=0,
                                     extra_body={"ignore_eos": True})
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert by_ids.choices[0].text == text.choices[0].text and by_ids.usage.prompt_tokens == len(ids)
    several = client.completions.create(model="tiny", prompt=[ids, "Once upon"], max_tokens=6, temperature=0,
                                        extra_body={"ignore_eos": True})
    assert [c.index for c in several.choices] == [0, 1] and several.choices[0].text == text.choices[0].text
    # n choices: seeded, reproducible, the first equal to the same request with n = 1
    a = client.completions.create(model="tiny", prompt="Once upon", max_tokens=12, temperature=1.0, seed=11, n=3,
                                  extra_body={"ignore_eos": True})
    b = client.completions.create(model="tiny", prompt="Once upon", max_tokens=12, temperature=1.0, seed=11, n=3,
                                  extra_body={"ignore_eos": True})
    one = client.completions.create(model="tiny", prompt="Once upon", max_tokens=12, temperature=1.0, seed=11,
                                    extra_body={"ignore_eos": True})
    texts = [c.text for c in a.choices]
    assert texts == [c.text for c in b.choices] and len(set(texts)) > 1 and texts[0] == one.choices[0].text
    assert a.usage.completion_tokens == 36
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], n=2,
                                          max_completion_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    assert [c.index for c in chat.choices] == [0, 1] and chat.usage.completion_tokens == 10
    streamed = {0: "", 1: ""}
    for c in client.completions.create(model="tiny", prompt="Once upon", max_tokens=12, temperature=1.0, seed=11,
                                       n=2, stream=True, extra_body={"ignore_eos": True}):
        for choice in c.choices:
            streamed[choice.index] += choice.text
    assert [streamed[0], streamed[1]] == texts[:2]


def test_logit_bias_and_penalties_reach_the_sampler(served, client):
    _, server = served
    ids = server.llm.tokenizer.encode("Once upon")
    forced = client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0,
                                       logit_bias={"42": 100}, extra_body={"ignore_eos": True})
    assert forced.choices[0].logprobs is None
    plain = client.completions.create(model="tiny", prompt=ids, max_tokens=8, temperature=0, logprobs=0,
                                      extra_body={"ignore_eos": True})
    tokens = [server.llm.tokenizer.encode(t)[0] for t in plain.choices[0].logprobs.tokens]
    assert server.llm.tokenizer.decode([42] * 5) == forced.choices[0].text
    banned = client.completions.create(model="tiny", prompt=ids, max_tokens=1, temperature=0, logprobs=0,
                                       logit_bias={str(tokens[0]): -100}, extra_body={"ignore_eos": True})
    assert banned.choices[0].logprobs.tokens[0] != plain.choices[0].logprobs.tokens[0]
    # a strong frequency penalty changes a greedy continuation that repeats a token
    assert len(set(tokens)) < len(tokens), "this tiny model's greedy continuation repeats itself"
    penalized = client.completions.create(model="tiny", prompt=ids, max_tokens=8, temperature=0,
                                          frequency_penalty=2.0, extra_body={"ignore_eos": True})
    assert penalized.choices[0].text != plain.choices[0].text


def engine_logprobs(server: AsyncEngine, ids: list[int]) -> np.ndarray:
    """log_softmax of the engine's own logits at every position of `ids` (row i predicts i + 1)."""
    session = server.llm.executor.session
    return np.stack([log_softmax(row) for row in probe_logits(session, ids, 1)])


def test_completion_logprobs_and_echo_equal_the_engines_logits(served, client):
    _, server = served
    ids = server.llm.tokenizer.encode("Once upon a time")
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0, logprobs=3, echo=True,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    out_ids = greedy_ids(server, ids, 6)
    assert len(lp.tokens) == len(ids) + 6 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert r.choices[0].text.startswith(server.llm.tokenizer.decode(ids))
    want = engine_logprobs(server, ids + out_ids)
    got = np.asarray(lp.token_logprobs[1:])
    expected = np.asarray([want[i - 1, t] for i, t in enumerate(ids + out_ids) if i > 0])
    assert np.abs(got - expected).max() < 1e-4
    for i in range(1, len(ids) + 6):  # the 3 most likely, and the chosen token, at each position
        top = lp.top_logprobs[i]
        best = np.sort(want[i - 1])[::-1][:3]
        assert sorted(top.values(), reverse=True)[:3] == pytest.approx(best.tolist(), abs=1e-4)
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    # greedy: each output token is the most likely one
    assert all(lp.token_logprobs[i] == pytest.approx(max(lp.top_logprobs[i].values())) for i in range(len(ids), len(ids) + 6))


def greedy_ids(server: AsyncEngine, ids: list[int], n: int) -> list[int]:
    """The engine's greedy continuation of `ids`, as token ids (no text round trip)."""
    from runtime.sampling import SamplingParams

    async def run():
        return await server.run_sequence(server.new_sequence(ids, SamplingParams(max_new_tokens=n, ignore_eos=True)))
    return asyncio.run(run()).output_ids


def test_chat_logprobs_shape_and_values(served, client):
    _, server = served
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                       temperature=0.8, seed=2, logprobs=True, top_logprobs=4,
                                       extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 5 and all(len(c.top_logprobs) == 4 for c in content)
    for c in content:
        values = [t.logprob for t in c.top_logprobs]
        assert values == sorted(values, reverse=True) and c.logprob <= values[0] + 1e-9
        assert bytes(c.bytes).decode("utf-8") == c.token
    assert "".join(c.token for c in content) == r.choices[0].message.content
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=5, temperature=0.8, seed=2, logprobs=True,
                                                 top_logprobs=4, stream=True, extra_body={"ignore_eos": True}))
    streamed = [c for chunk in chunks if chunk.choices and chunk.choices[0].logprobs
                for c in chunk.choices[0].logprobs.content]
    assert [c.token for c in streamed] == [c.token for c in content]  # (the prompt now comes from the prefix cache)
    assert [c.logprob for c in streamed] == pytest.approx([c.logprob for c in content], abs=1e-4)


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok", "n", "tags"],
          "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 99},
                         "tags": {"type": "array", "maxItems": 2, "items": {"enum": ["red", "blue"]}},
                         "who": {"type": "object", "required": ["id"], "additionalProperties": False,
                                 "properties": {"id": {"type": "string", "maxLength": 5}}}}}


def test_structured_outputs_follow_their_constraint(served, client):
    import jsonschema

    _, server = served
    messages = [{"role": "user", "content": "JSON please"}]
    compiled = server.llm.guides.compiled
    for seed in range(3):
        r = client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=60, temperature=1.0, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}})
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    assert server.llm.guides.compiled == compiled + 1  # compiled once, cached for the next requests
    r = client.completions.create(model="tiny", prompt="Pick:", max_tokens=10, temperature=1.0, seed=1, n=4,
                                  extra_body={"guided_choice": ["alpha", "beta gamma"]})
    assert {c.text for c in r.choices} <= {"alpha", "beta gamma"} and all(c.finish_reason == "stop" for c in r.choices)
    r = client.completions.create(model="tiny", prompt="Code:", max_tokens=12, temperature=1.0, seed=2,
                                  extra_body={"structured_outputs": {"regex": "[A-F]{2}-[0-9]{3}"}})
    assert re.fullmatch("[A-F]{2}-[0-9]{3}", r.choices[0].text) and r.choices[0].finish_reason == "stop"
    # any JSON object; "}" and " {}" pushed up by a bias: the mask keeps both out, "{}" (also pushed) wins
    bias = {str(server.llm.tokenizer.encode(t)[0]): b for t, b in (("}", 100), (" {}", 100), ("{}", 50))}
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=40, temperature=0,
                                       response_format={"type": "json_object"}, logit_bias=bias)
    assert r.choices[0].message.content == "{}" and r.choices[0].finish_reason == "stop"
    wait_idle(server)


@pytest.mark.parametrize("extra, message", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "nope"}}}},
     "invalid json schema"),
    ({"guided_regex": "([a-z]"}, "invalid regex"),
    ({"guided_json": {"type": "object", "maximum": -2**70}}, "invalid json schema"),  # past 64 bits: was a 500
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "one structured-output constraint, got guided_regex, guided_choice"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
])
def test_invalid_constraints_get_a_400_naming_the_problem(served, extra, message):
    r = httpx.post(served[0] + "/v1/chat/completions", json={"model": "tiny", "max_tokens": 4, **extra,
                                                             "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_a_grammar_that_refuses_its_token_ends_only_its_own_request(served, monkeypatch):
    """llguidance has refused a token its own mask allowed (a regex ending in a 4-byte UTF-8
    character, over byte tokens): that request gets a 400 naming it, the requests stepping
    beside it finish normally, and the engine loop records no failure."""
    from runtime.guided import Guide, GrammarError

    base, server = served
    consume = Guide.consume
    seen: dict[int, int] = {}

    def refuse_second(guide: Guide, token: int) -> None:  # no token is 60 letters long: 2 are needed
        seen[id(guide)] = seen.get(id(guide), 0) + 1
        if seen[id(guide)] == 2:
            raise GrammarError(f"the grammar refused token {token}: forced bytes")
        consume(guide, token)

    monkeypatch.setattr(Guide, "consume", refuse_second)
    grammar_errors = server.metrics.requests.labels(finish_reason="grammar_error")._value.get
    before = grammar_errors()

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as http:
            return await asyncio.gather(
                http.post(base + "/v1/completions", json={"model": "tiny", "prompt": "Code:", "max_tokens": 40,
                                                          "guided_regex": "[a-z]{60}"}),
                http.post(base + "/v1/completions", json={"model": "tiny", "prompt": "Plain", "max_tokens": 12,
                                                          "ignore_eos": True}))

    guided, plain = asyncio.run(both())
    assert guided.status_code == 400 and "refused token" in guided.json()["error"]["message"], guided.text
    assert guided.json()["error"]["code"] == "grammar_error"
    assert plain.status_code == 200 and plain.json()["usage"]["completion_tokens"] == 12
    assert grammar_errors() == before + 1 and not server.errors
    wait_idle(server)
