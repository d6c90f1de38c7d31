"""OpenAI-compatible HTTP server over the continuous-batching engine (FastAPI + uvicorn).

    POST /v1/completions        prompt (string or list of strings), SSE streaming with stream=true
    POST /v1/chat/completions   messages through the tokenizer's chat template
    GET  /v1/models, /health, /metrics (Prometheus)
    POST /tokenize, /detokenize, GET /tokenizer_info   the tokenizer (runtime.tokenize_api)

Requests as runtime.openai_api defines them: prompts as text, token ids or lists of either;
n choices per prompt; max_tokens / max_completion_tokens, temperature, top_p, seed, stop,
stream, presence / frequency penalties, logit_bias, logprobs (chat: logprobs + top_logprobs;
completions: logprobs = k, and with echo the prompt's own logprobs; max_tokens 0 with echo
scores the prompt alone), and vLLM's extras top_k,
min_tokens, ignore_eos, stop_token_ids, repetition_penalty. Errors are OpenAI-shaped JSON: 404
for a model this server does not serve (naming the one it does), 400 for a prompt plus
max_tokens beyond the engine's per-request capacity, an empty prompt, an unknown message role,
and fields this server does not implement (tools, suffix, ...: named in the message).
A client that disconnects aborts its request, which frees its cache slot. Usage reports the
prompt tokens served from the prefix cache (`prompt_tokens_details.cached_tokens`, as OpenAI
does); /metrics the prefix cache's hit rate and cached tokens.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any, AsyncIterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from optimizer.core.errors import OptimizerError
from runtime.async_engine import AsyncEngine
from runtime.executors import window_logits
from runtime.llm_engine import RequestOutput
from runtime.openai_api import (MAX_CHOICES, APIError, ChatRequest, CompletionRequest, SamplingRequest, chat_logprobs,
                                check_model, choice_seed, completion_logprobs, constraint, prompt_entries, prompt_ids,
                                refuse_unsupported, sampling_params)
from runtime.sequence import Sequence
from runtime.server_limits import LimitError, ServerLimits, apply_limits, install_limits
from runtime.server_schema import document_bodies
from runtime.tokenize_api import DetokenizeRequest, TokenizeRequest, add_tokenizer_routes

DISCONNECT_POLL_SECONDS = 0.25
CLIENT_CLOSED = 499  # nginx's "client closed request": logged as such, not as an error


def create_app(engine: Any, server: AsyncEngine, model_name: str, limits: ServerLimits | None = None) -> FastAPI:
    """The app for `engine` (a runtime.Engine, for its tokenizer) served by `server`, within
    `limits` (runtime.server_limits; default: ServerLimits())."""
    app = FastAPI(title="optimizer", docs_url=None, redoc_url=None)
    install_limits(app, limits or ServerLimits(), server.llm.scheduler.max_running)
    document_bodies(app, {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatRequest,
                          "/tokenize": TokenizeRequest, "/detokenize": DetokenizeRequest})
    tokenizer = engine.tokenizer
    vocab = _vocab_size(engine)
    add_tokenizer_routes(app, engine, model_name, server.llm.max_tokens() + 1, vocab, _read)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return _error(e.status, e.message, e.param, e.kind, e.code)

    @app.exception_handler(LimitError)
    async def _limit_error(_: Request, e: LimitError) -> JSONResponse:
        return _error(e.status, e.message, e.param, e.kind, e.code)

    @app.exception_handler(OptimizerError)  # bad input found below the handlers (e.g. text that is not Unicode)
    async def _input_error(_: Request, e: OptimizerError) -> JSONResponse:
        return _error(400, e.message)

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
        data = await _json(request)
        refuse_unsupported(data, "completions")
        body = _parse(CompletionRequest, data)
        check_model(body.model, model_name)
        if body.best_of is not None and body.best_of != body.n:
            raise APIError(400, "best_of other than n is not supported (every choice is returned)", "best_of")
        prompts = prompt_ids(body.prompt, lambda text: _encode(engine, text), vocab)
        if body.echo and body.stream:
            raise APIError(400, "echo is not supported with stream", "echo")
        job = _Job(body, [ids for ids, _ in prompts], body.logprobs, chat=False)
        score_only = body.max_tokens == 0 and body.max_completion_tokens is None
        if score_only:
            _check_score_only(request, job, server.llm.max_tokens())
        if body.echo:
            job.echo = [text if text is not None else _decode(tokenizer, ids) for ids, text in prompts]
        if score_only:  # checked above: the prompts fit; now their own logprobs
            if body.logprobs is not None:
                job.prompt_logprobs = [await _prompt_logprobs(engine, ids, body.logprobs) for ids in job.prompts]
            return _prompt_only(job, model_name, tokenizer)
        return await _respond(request, server, job, model_name, tokenizer, vocab, engine)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        data = await _json(request)
        refuse_unsupported(data, "chat")
        body = _parse(ChatRequest, data)
        check_model(body.model, model_name)
        if not body.messages:
            raise APIError(400, "messages is empty", "messages")
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions", "messages")
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        try:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except Exception as e:  # a template that rejects the conversation (roles, order)
            raise APIError(400, f"the chat template rejected the messages: {e}", "messages") from e
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        return await _respond(request, server, _Job(body, [list(ids)], logprobs, chat=True), model_name,
                              tokenizer, vocab)

    return app


# -- request handling --------------------------------------------------------------------------
class _Job:
    """One HTTP request: its prompts, n choices of each, and what the response shows."""

    def __init__(self, body: SamplingRequest, prompts: list[list[int]], logprobs: int | None, chat: bool) -> None:
        self.body, self.prompts, self.logprobs, self.chat = body, prompts, logprobs, chat
        self.echo: list[str] | None = None  # completions with echo: each prompt's text
        self.prompt_logprobs: list[list] | None = None  # completions with echo and logprobs
        if len(prompts) * body.n > MAX_CHOICES:
            raise APIError(400, f"{len(prompts)} prompts x n={body.n} choices exceeds this server's limit of "
                                f"{MAX_CHOICES} per request; split the request", "n")


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from e


async def _read(request: Request, model: type[BaseModel]) -> Any:
    data = await _json(request)
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    return _parse(model, data)


def _parse(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise APIError(400, f"{where}: {first['msg']}", where or None) from e


def _vocab_size(engine: Any) -> int:
    vocab = engine.session.logits_type()[1]
    if vocab is None and engine.tokenizer is not None:
        vocab = len(engine.tokenizer)
    return int(vocab) if vocab is not None else 2**31


def _encode(engine: Any, prompt: str) -> list[int]:
    if engine.tokenizer is None:
        raise APIError(400, "this engine has no tokenizer, so it cannot take text prompts; send token ids")
    return engine.encode(prompt)  # with BOS where the architecture needs it


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids) if tokenizer is not None else ""


def _token_text(tokenizer: Any) -> Any:
    cache: dict[int, str] = {}

    def text(token: int) -> str:
        if token not in cache:
            cache[token] = tokenizer.decode([token]) if tokenizer is not None else f"token_id:{token}"
        return cache[token]
    return text


_PROMPT_LOGITS_LOCK = threading.Lock()  # one prompt-logprobs pass at a time (it runs beside the engine loop)


async def _prompt_logprobs(engine: Any, ids: list[int], k: int) -> list:
    """The prompt's own logprobs (echo): every position's logits from one prefill of the prompt
    through the engine's session, off the event loop. Only for a prompt that passed the limits
    and fits the engine's per-request capacity (so onnxruntime's arena never grows past what
    serving that prompt takes); the logits go to a numpy array of ours, not to the arena."""
    if not ids:
        raise APIError(400, "the prompt encodes to no tokens", "prompt")

    def run() -> list:
        dtype, width = engine.session.logits_type()
        out = np.empty((1, len(ids), width), dtype) if width is not None else None
        with _PROMPT_LOGITS_LOCK:
            logits = window_logits(engine.session, np.asarray([ids], np.int64), out)[0]
        return prompt_entries(logits, ids, k)
    return await asyncio.to_thread(run)


async def _respond(request: Request, server: AsyncEngine, job: _Job, model_name: str, tokenizer: Any,
                   vocab: int, engine: Any = None) -> Response:
    capacity = server.llm.max_tokens()
    body = job.body
    apply_limits(request.app.state.limits, job, capacity)  # runtime.server_limits: 400 past a limit
    guide = constraint(body)
    seqs = []  # choice index = prompt index * n + j
    for ids in job.prompts:
        if not ids:
            raise APIError(400, "the prompt encodes to no tokens", "prompt")
        for j in range(body.n):
            params = sampling_params(body, len(ids), capacity, vocab, choice_seed(body.seed, j), job.logprobs, guide)
            try:  # everything the engine would refuse, refused here with a 400 (before any stream starts)
                seqs.append(server.new_sequence(ids, params))
            except OptimizerError as e:
                raise APIError(400, e.message + (f"; {e.hint}" if e.hint else "")) from e
    if job.echo is not None and job.logprobs is not None:  # every prompt fits: now its own logprobs
        job.prompt_logprobs = [await _prompt_logprobs(engine, ids, job.logprobs) for ids in job.prompts]
    rid = ("chatcmpl-" if job.chat else "cmpl-") + uuid.uuid4().hex[:24]
    if body.stream:
        return StreamingResponse(_sse(server, seqs, job, rid, model_name, tokenizer), media_type="text/event-stream")
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
    own = next((s.error for s in seqs if s.error is not None), None)
    if own is not None:  # the request's own grammar could not go on (runtime.guided.GrammarError)
        raise APIError(400, f"the structured output constraint could not be followed: {own}; simplify it",
                       code="grammar_error")
    if any(s.finish_reason == "error" for s in seqs):
        raise APIError(500, "the engine failed while running this request (see the server log)",
                       kind="server_error")
    text = _token_text(tokenizer)
    choices = []
    for i, s in enumerate(seqs):
        p = i // body.n
        if job.chat:
            choice = {"index": i, "message": {"role": "assistant", "content": s.text},
                      "logprobs": chat_logprobs(_entries(s), text) if job.logprobs is not None else None}
        else:
            prefix = job.echo[p] if job.echo is not None else ""
            logprobs = None
            if job.logprobs is not None:
                entries = (job.prompt_logprobs[p] if job.prompt_logprobs is not None else []) + _entries(s)
                logprobs = completion_logprobs(entries, text)
            choice = {"index": i, "text": prefix + s.text, "logprobs": logprobs}
        choices.append({**choice, "finish_reason": _reason(s.finish_reason)})
    return JSONResponse({"id": rid, "object": "chat.completion" if job.chat else "text_completion",
                         "created": int(time.time()), "model": model_name, "choices": choices,
                         "usage": _usage(job, seqs)})


def _check_score_only(request: Request, job: _Job, capacity: int) -> None:
    """max_tokens 0 (OpenAI's legacy way to score a prompt): only with echo, and within the
    per-request limits a generating request has."""
    if not job.body.echo:
        raise APIError(400, "max_tokens 0 generates nothing: it takes echo: true (the prompt, with its "
                            "logprobs where logprobs is set)", "max_tokens")
    apply_limits(request.app.state.limits, job, capacity)
    for ids in job.prompts:
        if len(ids) > capacity + 1:
            raise APIError(400, f"the prompt ({len(ids)} tokens) exceeds this server's limit of {capacity + 1} "
                                "tokens per request; shorten the prompt", "prompt")


def _prompt_only(job: _Job, model_name: str, tokenizer: Any) -> Response:
    """The answer to max_tokens 0 with echo: each prompt (n times), its logprobs where asked."""
    text = _token_text(tokenizer)
    choices = []
    for p, _ in enumerate(job.prompts):
        logprobs = completion_logprobs(job.prompt_logprobs[p], text) if job.prompt_logprobs is not None else None
        choices += [{"index": p * job.body.n + j, "text": job.echo[p], "logprobs": logprobs, "finish_reason": "length"}
                    for j in range(job.body.n)]
    return JSONResponse({"id": "cmpl-" + uuid.uuid4().hex[:24], "object": "text_completion",
                         "created": int(time.time()), "model": model_name, "choices": choices,
                         "usage": _usage(job, [])})


def _entries(seq: Sequence, first: int = 0) -> list:
    return [(t, lp, top) for t, lp, top in seq.logprobs[first:]]


def _usage(job: _Job, seqs: list[Sequence]) -> dict[str, Any]:
    prompt = sum(len(p) for p in job.prompts) * job.body.n
    completion = sum(len(s.output_ids) for s in seqs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(s.cached_tokens or 0 for s in seqs)}}


async def _merged(server: AsyncEngine, seqs: list[Sequence]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """The updates of several sequences as they come, tagged with each one's index; leaving
    early aborts those still running."""
    queue: asyncio.Queue[tuple[int, RequestOutput | None]] = asyncio.Queue()

    async def pump(i: int, seq: Sequence) -> None:
        async for out in server.stream_sequence(seq):
            await queue.put((i, out))
        await queue.put((i, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(seqs)]
    try:
        remaining = len(tasks)
        while remaining:
            i, out = await queue.get()
            if out is None:
                remaining -= 1
            else:
                yield i, out
    finally:
        for t in tasks:
            t.cancel()


async def _sse(server: AsyncEngine, seqs: list[Sequence], job: _Job, rid: str, model_name: str,
               tokenizer: Any) -> AsyncIterator[str]:
    created = int(time.time())
    chat = job.chat
    kind = "chat.completion.chunk" if chat else "text_completion"
    text = _token_text(tokenizer)
    sent = [0] * len(seqs)  # logprob entries already streamed, per choice

    def chunk(choices: list[dict[str, Any]], usage: dict | None = None) -> str:
        payload = {"id": rid, "object": kind, "created": created, "model": model_name, "choices": choices}
        if usage is not None:
            payload["usage"] = usage
        return "data: " + json.dumps(payload) + "\n\n"

    def choice(i: int, delta: str | None, reason: str | None, role: bool = False) -> dict[str, Any]:
        logprobs = None
        if job.logprobs is not None and not role:
            entries = _entries(seqs[i], sent[i])
            sent[i] += len(entries)
            logprobs = chat_logprobs(entries, text) if chat else completion_logprobs(entries, text)
        if chat:
            d: dict[str, Any] = {"role": "assistant"} if role else {}
            if delta is not None:
                d["content"] = delta
            return {"index": i, "delta": d, "finish_reason": reason, "logprobs": logprobs}
        return {"index": i, "text": delta or "", "finish_reason": reason, "logprobs": logprobs}

    if chat:
        for i in range(len(seqs)):
            yield chunk([choice(i, "", None, role=True)])
    async for i, out in _merged(server, seqs):  # leaving early (disconnect) aborts the requests
        if out.text_delta or out.finished or job.logprobs is not None:
            yield chunk([choice(i, out.text_delta, _reason(out.finish_reason) if out.finished else None)])
    if job.body.stream_options is not None and job.body.stream_options.include_usage:
        yield chunk([], _usage(job, seqs))
    yield "data: [DONE]\n\n"


def _reason(reason: str | None) -> str | None:
    return {"stop": "stop", "length": "length"}.get(reason or "", reason)


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
           code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)
