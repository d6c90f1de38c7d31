"""OpenAI-compatible HTTP server over the continuous-batching engine (FastAPI + uvicorn).

    POST /v1/completions        prompt (string or list of strings), SSE streaming with stream=true
    POST /v1/chat/completions   messages through the tokenizer's chat template
    GET  /v1/models, /health, /metrics (Prometheus)

Sampling fields: max_tokens, temperature, top_p, seed, stop, stream, and vLLM's extras
top_k, min_tokens, ignore_eos, stop_token_ids. Errors are OpenAI-shaped JSON with a 4xx
status: a prompt plus max_tokens beyond the engine's per-request capacity, an empty prompt,
options this server does not implement (n > 1, logprobs, echo, best_of, tools).
A client that disconnects aborts its request, which frees its cache slot. Usage reports the
prompt tokens served from the prefix cache (`prompt_tokens_details.cached_tokens`, as OpenAI
does); /metrics the prefix cache's hit rate and cached tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from optimizer.core.errors import OptimizerError
from runtime.async_engine import AsyncEngine
from runtime.llm_engine import RequestOutput
from runtime.sampling import SamplingParams
from runtime.sequence import Sequence

DISCONNECT_POLL_SECONDS = 0.25
CLIENT_CLOSED = 499  # nginx's "client closed request": logged as such, not as an error


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI fields (user, ...) are ignored

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1
    logprobs: Any = None
    top_k: int = Field(default=0, ge=-1)  # vLLM: -1 or 0 = off
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    best_of: int | None = None
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: Any = None


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: Literal["invalid_request_error", "server_error"] = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def create_app(engine: Any, server: AsyncEngine, model_name: str) -> FastAPI:
    """The app for `engine` (a runtime.Engine, for its tokenizer) served by `server`."""
    app = FastAPI(title="optimizer", docs_url=None, redoc_url=None)
    tokenizer = engine.tokenizer

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return _error(e.status, e.message, e.param, e.kind)

    @app.exception_handler(ValidationError)
    async def _validation_error(_: Request, e: ValidationError) -> JSONResponse:
        return _error(400, str(e))

    @app.get("/health")
    async def health() -> Response:
        if not server.alive:
            return JSONResponse({"status": "engine loop stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "optimizer"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = _parse(CompletionRequest, await _json(request))
        if body.echo or (body.best_of or 1) > 1:
            raise APIError(400, "echo and best_of > 1 are not supported", "echo")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise APIError(400, "prompt is empty", "prompt")
        if body.stream and len(prompts) > 1:
            raise APIError(400, "streaming takes one prompt", "prompt")
        jobs = [_encode(engine, p) for p in prompts]
        return await _respond(request, server, body, jobs, model_name, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = _parse(ChatRequest, await _json(request))
        if body.tools:
            raise APIError(400, "tools are not supported", "tools")
        if body.max_completion_tokens is not None:
            body.max_tokens = body.max_completion_tokens
        if not body.messages:
            raise APIError(400, "messages is empty", "messages")
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions", "messages")
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        try:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except Exception as e:  # a template that rejects the conversation (roles, order)
            raise APIError(400, f"the chat template rejected the messages: {e}", "messages") from e
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return await _respond(request, server, body, [list(ids)], model_name, chat=True)

    return app


# -- request handling --------------------------------------------------------------------------
async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from e


def _parse(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise APIError(400, f"{where}: {first['msg']}", where or None) from e


def _encode(engine: Any, prompt: str) -> list[int]:
    if engine.tokenizer is None:
        raise APIError(400, "this engine has no tokenizer, so it cannot take text prompts")
    return engine.encode(prompt)  # with BOS where the architecture needs it


def _sampling(body: _Sampling, prompt_len: int, capacity: int) -> SamplingParams:
    if body.n != 1:
        raise APIError(400, "only n = 1 is supported", "n")
    if body.logprobs:
        raise APIError(400, "logprobs are not supported", "logprobs")
    max_tokens = body.max_tokens if body.max_tokens is not None else capacity - prompt_len + 1
    if prompt_len + max_tokens - 1 > capacity:
        raise APIError(400, f"the prompt ({prompt_len} tokens) plus max_tokens ({max_tokens}) exceeds this "
                            f"server's limit of {capacity + 1} tokens per request; shorten the prompt or "
                            "lower max_tokens", "max_tokens")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    try:
        return SamplingParams(max_new_tokens=max_tokens, temperature=body.temperature, top_k=max(body.top_k, 0),
                              top_p=body.top_p, seed=body.seed, ignore_eos=body.ignore_eos,
                              stop_token_ids=tuple(body.stop_token_ids or ()), stop=tuple(stop),
                              min_tokens=min(body.min_tokens, max_tokens))
    except OptimizerError as e:
        raise APIError(400, e.message) from e


async def _respond(request: Request, server: AsyncEngine, body: _Sampling, prompts: list[list[int]],
                   model_name: str, chat: bool) -> Response:
    capacity = server.llm.max_tokens()
    seqs = []
    for ids in prompts:
        if not ids:
            raise APIError(400, "the prompt encodes to no tokens", "prompt")
        try:  # everything the engine would refuse, refused here with a 400 (before any stream starts)
            seqs.append(server.new_sequence(ids, _sampling(body, len(ids), capacity)))
        except OptimizerError as e:
            raise APIError(400, e.message) from e
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    if body.stream:
        return StreamingResponse(_sse(server, seqs[0], rid, model_name, chat), media_type="text/event-stream")
    tasks = [asyncio.ensure_future(server.run_sequence(seq)) for seq in seqs]
    try:
        while True:  # wait, watching for the client going away
            done, _ = await asyncio.wait(tasks, timeout=DISCONNECT_POLL_SECONDS)
            if len(done) == len(tasks):
                break
            if await request.is_disconnected():
                return Response(status_code=CLIENT_CLOSED)  # nobody reads it; the finally aborts
    finally:
        for t in tasks:
            t.cancel()  # closing a stream aborts its request (AsyncEngine.stream)
    seqs = [t.result() for t in tasks]
    if any(s.finish_reason == "error" for s in seqs):
        raise APIError(500, "the engine failed while running this request (see the server log)",
                       kind="server_error")
    completion = sum(len(s.output_ids) for s in seqs)
    usage = {"prompt_tokens": sum(len(p) for p in prompts), "completion_tokens": completion,
             "total_tokens": sum(len(p) for p in prompts) + completion,
             "prompt_tokens_details": {"cached_tokens": sum(s.cached_tokens or 0 for s in seqs)}}
    if chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": s.text},
                    "finish_reason": _reason(s.finish_reason), "logprobs": None} for i, s in enumerate(seqs)]
    else:
        choices = [{"index": i, "text": s.text, "finish_reason": _reason(s.finish_reason), "logprobs": None}
                   for i, s in enumerate(seqs)]
    return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion",
                         "created": int(time.time()), "model": model_name, "choices": choices, "usage": usage})


async def _sse(server: AsyncEngine, seq: Sequence, rid: str, model_name: str, chat: bool) -> AsyncIterator[str]:
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, reason: str | None, role: bool = False) -> str:
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
        return "data: " + json.dumps({"id": rid, "object": kind, "created": created, "model": model_name,
                                      "choices": [choice]}) + "\n\n"

    if chat:
        yield chunk("", None, role=True)
    out: RequestOutput | None = None
    async for out in server.stream_sequence(seq):  # leaving early (disconnect) aborts the request
        if out.text_delta or out.finished:
            yield chunk(out.text_delta, _reason(out.finish_reason) if out.finished else None)
    yield "data: [DONE]\n\n"


def _reason(reason: str | None) -> str | None:
    return {"stop": "stop", "length": "length"}.get(reason or "", reason)


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status)
