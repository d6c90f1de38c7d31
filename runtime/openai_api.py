"""The OpenAI API's requests as this server takes them, and the pieces of its responses.

Requests are pydantic models (unknown fields that change nothing, like `user`, are ignored);
fields that would change the answer and that this server does not implement are refused by
name with a 400 (`UNSUPPORTED`), never ignored. `sampling_params` turns a request into the
engine's SamplingParams; `completion_logprobs` and `chat_logprobs` shape recorded logprobs as
OpenAI's legacy completions and chat responses do.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from optimizer.core.errors import OptimizerError
from runtime.guided import Constraint
from runtime.penalties import log_softmax, top_logprobs
from runtime.sampling import MAX_LOGPROBS, SamplingParams

MAX_CHOICES = 64  # prompts x n per request
ROLES = ("system", "developer", "user", "assistant", "tool")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: Literal["invalid_request_error", "server_error"] = "invalid_request_error",
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")  # OpenAI: optional, {} = any JSON
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(BaseModel):  # vLLM's newer form of the guided_* fields
    model_config = ConfigDict(extra="forbid")
    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | None = None


class SamplingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown fields that change nothing (user, ...) are ignored

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # OpenAI's newer name; wins over max_tokens
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    # vLLM's extras
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    top_k: int = Field(default=0, ge=-1)  # -1 or 0 = off
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    # structured outputs: OpenAI's response_format, or vLLM's guided_* / structured_outputs (one of them)
    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    structured_outputs: StructuredOutputs | None = None


class CompletionRequest(SamplingRequest):
    prompt: str | list[Any]  # checked by prompt_ids: strings, token ids, lists of either
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=16, ge=0)  # OpenAI's default; 0 with echo scores the prompt only


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal[ROLES]  # type: ignore[valid-type]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage]
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)


def _set(value: Any) -> bool:
    return value not in (None, False, [], {}, "")


# fields that change the answer and are not implemented: refused by name (value -> refused?)
UNSUPPORTED: dict[str, dict[str, Callable[[Any], bool]]] = {
    "completions": {"suffix": _set},
    "chat": {"tools": _set, "functions": _set, "function_call": lambda v: _set(v) and v != "none",
             "tool_choice": lambda v: _set(v) and v != "none", "audio": _set, "prediction": _set,
             "modalities": lambda v: _set(v) and v != ["text"], "web_search_options": _set},
}


def refuse_unsupported(data: Any, endpoint: str) -> None:
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    for name, refused in UNSUPPORTED[endpoint].items():
        if name in data and refused(data[name]):
            raise APIError(400, f"{name} is not supported by this server; remove it from the request", name)


def check_model(requested: str | None, served: str) -> None:
    """OpenAI answers an unknown model with 404 model_not_found; a missing one is a 400."""
    if requested is None:
        raise APIError(400, f"model is required; this server serves: {served}", "model")
    if requested != served:
        raise APIError(404, f"the model {requested!r} does not exist here; this server serves: {served}",
                       "model", code="model_not_found")


def choice_seed(seed: int | None, index: int) -> int | None:
    """The seed of choice `index` of a request (n > 1: each choice its own, the first the request's)."""
    if seed is None:
        return None
    base = seed % 2**64  # numpy takes non-negative seeds; OpenAI's are any int64
    return base if index == 0 else (base + index * 0x9E3779B97F4A7C15) % 2**64


def logit_bias_pairs(bias: dict[str, float] | None, vocab: int) -> tuple[tuple[int, float], ...]:
    pairs = []
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise APIError(400, f"logit_bias keys are token ids, got {key!r}", "logit_bias") from None
        if not 0 <= token < vocab:
            raise APIError(400, f"logit_bias token {token} is outside the vocabulary [0, {vocab})", "logit_bias")
        pairs.append((token, float(value)))
    return tuple(pairs)


def constraint(body: SamplingRequest) -> Constraint | None:
    """The request's structured-output constraint; a 400 where it names more than one."""
    found: list[tuple[str, Constraint]] = []

    def schema(value: Any) -> Constraint:
        return Constraint("json_schema", value if isinstance(value, str) else json.dumps(value, sort_keys=True))

    rf = body.response_format
    if rf is not None and rf.type == "json_object":
        found.append(("response_format", Constraint("json_object", "")))
    elif rf is not None and rf.type == "json_schema":
        if rf.json_schema is None:
            raise APIError(400, "response_format of type json_schema needs a json_schema field", "response_format")
        found.append(("response_format", schema(rf.json_schema.schema_)))
    so = body.structured_outputs
    for name, value, make in (
            ("guided_json", body.guided_json, schema),
            ("guided_regex", body.guided_regex, lambda v: Constraint("regex", v)),
            ("guided_choice", body.guided_choice, lambda v: Constraint("choice", json.dumps(v))),
            ("structured_outputs.json", so and so.json_, schema),
            ("structured_outputs.json_object", so and so.json_object, lambda v: Constraint("json_object", "")),
            ("structured_outputs.regex", so and so.regex, lambda v: Constraint("regex", v)),
            ("structured_outputs.choice", so and so.choice, lambda v: Constraint("choice", json.dumps(v)))):
        if value is not None and value is not False:
            found.append((name, make(value)))
    if len(found) > 1:
        raise APIError(400, "a request takes one structured-output constraint, got "
                            + ", ".join(name for name, _ in found), found[1][0])
    return found[0][1] if found else None


def sampling_params(body: SamplingRequest, prompt_len: int, capacity: int, vocab: int, seed: int | None,
                    logprobs: int | None, guide: Constraint | None = None) -> SamplingParams:
    max_tokens = body.max_completion_tokens or body.max_tokens
    max_tokens = max_tokens if max_tokens is not None else capacity - prompt_len + 1
    if prompt_len + max_tokens - 1 > capacity:
        raise APIError(400, f"the prompt ({prompt_len} tokens) plus max_tokens ({max_tokens}) exceeds this "
                            f"server's limit of {capacity + 1} tokens per request; shorten the prompt or "
                            "lower max_tokens", "max_tokens")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    try:
        return SamplingParams(max_new_tokens=max_tokens, temperature=body.temperature, top_k=max(body.top_k, 0),
                              top_p=body.top_p, seed=seed, ignore_eos=body.ignore_eos,
                              stop_token_ids=tuple(body.stop_token_ids or ()), stop=tuple(stop),
                              min_tokens=min(body.min_tokens, max_tokens),
                              presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                              repetition_penalty=body.repetition_penalty,
                              logit_bias=logit_bias_pairs(body.logit_bias, vocab), logprobs=logprobs,
                              constraint=guide)
    except OptimizerError as e:
        raise APIError(400, e.message) from e


def prompt_ids(prompt: Any, encode: Callable[[str], list[int]], vocab: int) -> list[tuple[list[int], str | None]]:
    """The prompts of a completions request as (token ids, text or None): a string, a list of
    strings, a list of token ids, or a list of such lists."""
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif prompt and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise APIError(400, "prompt is empty", "prompt")
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append((encode(p), p))
            continue
        if not isinstance(p, list) or not p or not all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            raise APIError(400, "prompt must be a string, a list of token ids, or a list of strings or of "
                                f"non-empty token-id lists; got an element {p!r:.60}", "prompt")
        bad = next((t for t in p if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(400, f"prompt token {bad} is outside the vocabulary [0, {vocab})", "prompt")
        out.append((list(p), None))
    return out


# -- logprobs in responses ------------------------------------------------------------------
Entry = tuple[int, "float | None", "list[tuple[int, float]] | None"]  # token, its logprob, top (most likely first)


def completion_logprobs(entries: list[Entry], token_text: Callable[[int], str], offset: int = 0) -> dict[str, Any]:
    """OpenAI's legacy shape: parallel lists of tokens, their logprobs, {token: logprob} of the
    most likely ones (the chosen token included, as OpenAI does), and text offsets."""
    tokens, lps, tops, offsets = [], [], [], []
    for token, lp, top in entries:
        text = token_text(token)
        tokens.append(text)
        lps.append(lp)
        offsets.append(offset)
        offset += len(text)
        if top is None:
            tops.append(None)
            continue
        shown = {token_text(t): v for t, v in top}
        shown.setdefault(text, lp)
        tops.append(shown)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(entries: list[Entry], token_text: Callable[[int], str]) -> dict[str, Any]:
    """OpenAI's chat shape: one {token, logprob, bytes, top_logprobs} per output token."""
    def item(token: int, lp: float | None) -> dict[str, Any]:
        text = token_text(token)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**item(t, lp), "top_logprobs": [item(u, v) for u, v in (top or [])]}
                        for t, lp, top in entries], "refusal": None}


def prompt_entries(logits: Any, ids: list[int], k: int) -> list[Entry]:
    """Each prompt token's logprob given the tokens before it, from every position's logits
    (N, V) of the prompt: the first token has none (nothing predicts it), as in OpenAI's echo."""
    entries: list[Entry] = [(ids[0], None, None)]
    for pos in range(1, len(ids)):
        lp = log_softmax(logits[pos - 1])
        entries.append((ids[pos], float(lp[ids[pos]]), top_logprobs(lp, k)))
    return entries
