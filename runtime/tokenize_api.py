"""The tokenizer over HTTP, as vLLM's server offers it: what lm-evaluation-harness's
`local-completions` detects and uses as its tokenizer (`tokenizer_backend=remote`, the default
`auto` picks it when GET /tokenizer_info and POST /tokenize answer), so that an evaluation needs
nothing but the server's URL.

    POST /tokenize         {"prompt": "text", "add_special_tokens": true}          (or "messages")
                           -> {"tokens": [...], "count": N, "max_model_len": L, "token_strs": null}
    POST /detokenize       {"tokens": [...]} -> {"prompt": "text"}
    GET  /tokenizer_info   -> {"tokenizer_class", "eos_token", "bos_token", "pad_token", "unk_token",
                               "chat_template", "model_max_length"}

`add_special_tokens: true` (the default) encodes as a text prompt on /v1/completions is encoded
(BOS where the architecture needs it); false gives the tokenizer's bare encoding, which is what
lm-eval asks for (and then sends as token ids). `model`, where given, must be the served one.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict

from runtime.openai_api import ChatMessage, APIError, check_model

SPECIAL = ("eos_token", "bos_token", "pad_token", "unk_token")


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None  # tokenized through the chat template
    add_special_tokens: bool = True
    add_generation_prompt: bool = True  # messages only
    return_token_strs: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    tokens: list[int]


def add_tokenizer_routes(app: FastAPI, engine: Any, model_name: str, capacity: int, vocab: int,
                         read: Callable[[Request, type[BaseModel]], Any]) -> None:
    """Add /tokenize, /detokenize and /tokenizer_info for `engine` (a runtime.Engine) to `app`;
    `read(request, Model)` parses a body into `Model` or raises an APIError (runtime.server's)."""
    tokenizer = engine.tokenizer

    def need_tokenizer() -> Any:
        if tokenizer is None:
            raise APIError(404, "this engine has no tokenizer (built without one); it takes token ids only")
        return tokenizer

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        body: TokenizeRequest = await read(request, TokenizeRequest)
        if body.model is not None:
            check_model(body.model, model_name)
        tok = need_tokenizer()
        ids = await asyncio.to_thread(encode, engine, body)
        return {"count": len(ids), "max_model_len": capacity, "tokens": ids,
                "token_strs": tok.convert_ids_to_tokens(ids) if body.return_token_strs else None}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        body: DetokenizeRequest = await read(request, DetokenizeRequest)
        if body.model is not None:
            check_model(body.model, model_name)
        tok = need_tokenizer()
        bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(400, f"token {bad} is outside the vocabulary [0, {vocab})", "tokens")
        return {"prompt": await asyncio.to_thread(tok.decode, body.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        tok = need_tokenizer()
        info: dict[str, Any] = {"tokenizer_class": type(tok).__name__, "model_max_length": capacity,
                                "chat_template": getattr(tok, "chat_template", None)}
        for name in SPECIAL:
            value = getattr(tok, name, None)
            info[name] = str(value) if value is not None else None
        return info


def encode(engine: Any, body: TokenizeRequest) -> list[int]:
    """The token ids of a /tokenize request: its prompt or its messages (exactly one)."""
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give exactly one of prompt and messages", "prompt")
    tok = engine.tokenizer
    if body.messages is not None:
        if not getattr(tok, "chat_template", None):
            raise APIError(400, "this model's tokenizer has no chat template", "messages")
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        try:
            ids = tok.apply_chat_template(messages, add_generation_prompt=body.add_generation_prompt, tokenize=True)
        except Exception as e:  # a template that rejects the conversation (roles, order)
            raise APIError(400, f"the chat template rejected the messages: {e}", "messages") from e
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids)
    if body.add_special_tokens:
        return engine.encode(body.prompt)  # as /v1/completions encodes a text prompt
    try:
        return list(tok(body.prompt, add_special_tokens=False).input_ids)
    except UnicodeEncodeError as e:  # a lone surrogate: not text a tokenizer takes
        raise APIError(400, f"the prompt is not valid Unicode text: {e}", "prompt") from e
