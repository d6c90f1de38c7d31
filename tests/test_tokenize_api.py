"""/tokenize, /detokenize and /tokenizer_info (runtime/tokenize_api.py), vLLM's shapes, and
max_tokens 0 with echo on /v1/completions: over real HTTP on a tiny engine."""

from __future__ import annotations

import httpx2 as httpx
import pytest

from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine
from runtime.server_limits import ServerLimits
from tests.test_server_limits import assert_error, serving

CAPACITY = 96


@pytest.fixture(scope="module")
def engine(tmp_path_factory, smol_tokenizer_dir):
    out = tmp_path_factory.mktemp("tok") / "engine"
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-llama", tokenizer=str(smol_tokenizer_dir),
                              quiet=True, kv_slots=2, kv_capacity=CAPACITY))
    return Engine.load(out)


@pytest.fixture(scope="module")
def base(engine):
    with serving(engine) as (url, _):
        yield url


def test_tokenize_and_detokenize_round_trip_as_the_tokenizer_does(base, engine):
    tok = engine.tokenizer
    text = "Hello world<|im_end|> once upon a time"
    r = httpx.post(base + "/tokenize", json={"prompt": text, "add_special_tokens": False, "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    want = tok(text, add_special_tokens=False).input_ids
    assert body["tokens"] == want and body["count"] == len(want) and tok.eos_token_id in want  # special tokens parsed
    assert body["token_strs"] == tok.convert_ids_to_tokens(want) and body["max_model_len"] == CAPACITY + 1
    default = httpx.post(base + "/tokenize", json={"prompt": text, "model": "tiny"}).json()
    assert default["tokens"] == engine.encode(text) and default["token_strs"] is None  # as a completions prompt
    back = httpx.post(base + "/detokenize", json={"tokens": want}).json()
    assert back == {"prompt": tok.decode(want)}
    messages = [{"role": "user", "content": "Hi there"}]
    chat = httpx.post(base + "/tokenize", json={"messages": messages}).json()
    assert chat["tokens"] == list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])


def test_tokenizer_info_names_the_special_tokens_and_template(base, engine):
    info = httpx.get(base + "/tokenizer_info").json()
    tok = engine.tokenizer
    assert info["eos_token"] == tok.eos_token and info["bos_token"] == tok.bos_token
    assert info["chat_template"] == tok.chat_template and info["model_max_length"] == CAPACITY + 1


@pytest.mark.parametrize("path,body,status,needle", [
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 400, "exactly one of prompt"),
    ("/tokenize", {}, 400, "exactly one of prompt"),
    ("/tokenize", {"prompt": 5}, 400, "prompt"),
    ("/tokenize", {"prompt": "a", "model": "other"}, 404, "does not exist here"),
    ("/tokenize", {"messages": [{"role": "wizard", "content": "b"}]}, 400, "role"),
    ("/detokenize", {"tokens": [1, 10**9]}, 400, "outside the vocabulary"),
    ("/detokenize", {"tokens": "abc"}, 400, "tokens"),
    ("/detokenize", [1, 2], 400, "must be a JSON object"),
])
def test_bad_tokenizer_requests_get_a_clear_error(base, path, body, status, needle):
    assert_error(httpx.post(base + path, json=body), status, needle)


def test_tokenizer_paths_need_the_api_key_and_keep_to_the_body_limit(engine):
    with serving(engine, ServerLimits(api_keys=("sk-t",), max_body_bytes=200)) as (url, _):
        assert_error(httpx.post(url + "/tokenize", json={"prompt": "a"}), 401, "API key")
        assert httpx.get(url + "/tokenizer_info").status_code == 401
        auth = {"Authorization": "Bearer sk-t"}
        assert httpx.post(url + "/tokenize", json={"prompt": "a"}, headers=auth).status_code == 200
        assert_error(httpx.post(url + "/tokenize", json={"prompt": "a" * 500}, headers=auth), 413, "larger than")
        assert_error(httpx.post(url + "/detokenize", json={"tokens": [1] * 200}, headers=auth), 413, "larger than")


def test_an_engine_without_tokenizer_says_so(tmp_path):
    out = tmp_path / "bare"
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-llama", quiet=True, kv_slots=1,
                              kv_capacity=32))
    with serving(Engine.load(out)) as (url, _):
        assert_error(httpx.get(url + "/tokenizer_info"), 404, "no tokenizer")
        assert_error(httpx.post(url + "/tokenize", json={"prompt": "a"}), 404, "no tokenizer")


def test_max_tokens_0_with_echo_scores_the_prompt_only(base, engine):
    ids = engine.tokenizer.encode("Once upon a time there was")
    one = httpx.post(base + "/v1/completions", json={"model": "tiny", "prompt": [ids, ids[:3]], "max_tokens": 1,
                                                     "echo": True, "logprobs": 2, "temperature": 0}).json()
    zero = httpx.post(base + "/v1/completions", json={"model": "tiny", "prompt": [ids, ids[:3]], "max_tokens": 0,
                                                      "echo": True, "logprobs": 2, "n": 2}).json()
    assert [c["index"] for c in zero["choices"]] == [0, 1, 2, 3]
    assert zero["usage"]["completion_tokens"] == 0 and zero["usage"]["prompt_tokens"] == 2 * (len(ids) + 3)
    for choice, p in zip(zero["choices"], (0, 0, 1, 1)):
        scored, generated = choice["logprobs"], one["choices"][p]["logprobs"]
        n = len(scored["tokens"])
        assert n == (len(ids) if p == 0 else 3) and choice["finish_reason"] == "length"
        assert scored["token_logprobs"] == generated["token_logprobs"][:n]  # the same prompt pass
        assert scored["top_logprobs"] == generated["top_logprobs"][:n]
        assert choice["text"] == engine.tokenizer.decode(ids if p == 0 else ids[:3])
    no_lp = httpx.post(base + "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 0, "echo": True})
    assert no_lp.json()["choices"][0]["logprobs"] is None and no_lp.json()["choices"][0]["text"] == "Hi"
    assert_error(httpx.post(base + "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 0}),
                 400, "takes echo: true")
    too_long = {"model": "tiny", "prompt": [1] * (CAPACITY + 2), "max_tokens": 0, "echo": True}
    assert_error(httpx.post(base + "/v1/completions", json=too_long), 400, "tokens per request")
