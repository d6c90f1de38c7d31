"""What `optimize serve` lets a client do: API keys, request limits, the waiting-request bound,
a per-request deadline and CORS. Every limit is a field of `ServerLimits` with its default and
help text (the CLI's options are made from these fields: optimizer/cli/run.py).

`install_limits(app, limits, max_running)` wraps the FastAPI app in `LimitsMiddleware` (plain
ASGI, so streamed responses pass through untouched), which, in order:

1. authenticates (`Authorization: Bearer KEY`, as OpenAI clients send it) every path but
   `/health` (and `/metrics` with `metrics_need_key=False`): 401 with an OpenAI-shaped error;
2. on the generating and tokenizing endpoints, refuses a body over `max_body_bytes` (413), read
   before the app parses it;
3. answers 429 at once when `max_running + max_waiting` generating requests are already in
   flight, instead of queueing without bound;
4. cancels a request still running after `request_timeout` seconds (which aborts its sequences
   and frees their cache): 408 if nothing was sent yet, else the stream ends there.

`apply_limits` (called by the server once a request's prompts are tokenized) applies the
limits that need the parsed request: prompt tokens, max_tokens, stop strings. CORS headers are
sent only for the origins in `cors_origins` (none by default).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Awaitable, Callable

from optimizer.core.errors import InputError

GENERATE_PATHS = ("/v1/completions", "/v1/chat/completions")
BODY_PATHS = GENERATE_PATHS + ("/tokenize", "/detokenize")  # bodies held to max_body_bytes
OPEN_PATHS = ("/health",)


def _opt(default: Any, flag: str, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"flag": flag, "help": help, **extra})


@dataclass(frozen=True)
class ServerLimits:
    """The server's limits; each field is one `optimize serve` option (metadata: flag, help)."""

    api_keys: tuple[str, ...] = _opt((), "--api-key", "An API key clients must send as `Authorization: Bearer KEY` "
                                     "(repeatable; also OPTIMIZER_API_KEY, whitespace-separated) [default: none, "
                                     "no authentication].", multiple=True, envvar="OPTIMIZER_API_KEY")
    api_key_file: Path | None = _opt(None, "--api-key-file", "A file of API keys, one a line (# comments).")
    metrics_need_key: bool = _opt(True, "--metrics-need-key/--metrics-without-key",
                                  "With API keys, /metrics needs one too (/health never does).")
    max_body_bytes: int = _opt(1 << 20, "--max-body-bytes", "Largest request body; larger ones get 413.")
    max_prompt_tokens: int | None = _opt(None, "--max-prompt-tokens",
                                         "Most prompt tokens a request may send [default: the engine's per-request "
                                         "capacity].")
    max_output_tokens: int | None = _opt(None, "--max-output-tokens",
                                         "Largest max_tokens a request may ask for [default: the engine's "
                                         "per-request capacity].")
    max_stop: int = _opt(4, "--max-stop", "Most stop strings a request may give (OpenAI's limit).")
    max_stop_length: int = _opt(256, "--max-stop-length", "Longest stop string, in characters.")
    max_waiting: int = _opt(64, "--max-waiting", "Generating requests that may wait beyond the engine's running "
                                                 "slots; more get 429 at once.")
    request_timeout: float = _opt(600.0, "--request-timeout", "Seconds a request may run (waiting included) before "
                                                              "it is cancelled and its cache freed; 0: no limit.")
    cors_origins: tuple[str, ...] = _opt((), "--cors-origin", "An origin browsers may call the API from "
                                         "(repeatable; `*` for any) [default: none, no CORS headers].", multiple=True)

    def __post_init__(self) -> None:
        for name, low in (("max_body_bytes", 1), ("max_prompt_tokens", 1), ("max_output_tokens", 1),
                          ("max_stop", 0), ("max_stop_length", 1), ("max_waiting", 0), ("request_timeout", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                flag = next(f.metadata["flag"] for f in fields(self) if f.name == name)
                raise InputError(f"{flag} must be >= {low}, not {value}")

    def keys(self) -> tuple[str, ...]:
        """The keys given directly and those in `api_key_file`."""
        keys = [k for k in self.api_keys if k]
        if self.api_key_file is not None:
            keys += read_key_file(Path(self.api_key_file))
        return tuple(keys)


def limit_fields() -> list:
    """ServerLimits' fields, in order: what the CLI turns into options."""
    return list(fields(ServerLimits))


def read_key_file(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the API key file {path}: {exc}", hint="one key a line") from exc
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise InputError(f"the API key file {path} holds no key", hint="one key a line")
    return keys


class LimitError(Exception):
    """A request refused by a limit: the status and an OpenAI-shaped error body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> bytes:
        return json.dumps({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                     "code": self.code}}).encode()


def apply_limits(limits: ServerLimits, job: Any, capacity: int) -> None:
    """The limits on a parsed request `job` (runtime.server's: prompts as token ids, body, chat):
    LimitError (400) past one; a max_tokens the client left to its default is lowered to the limit."""
    body = job.body
    longest = max((len(p) for p in job.prompts), default=0)
    if limits.max_prompt_tokens is not None and longest > limits.max_prompt_tokens:
        raise LimitError(400, f"the prompt has {longest} tokens, more than this server's limit of "
                              f"{limits.max_prompt_tokens}", "messages" if job.chat else "prompt",
                         code="prompt_too_long")
    given = body.max_completion_tokens or (body.max_tokens if "max_tokens" in body.model_fields_set else None)
    cap = limits.max_output_tokens
    if cap is not None and given is not None and given > cap:
        raise LimitError(400, f"max_tokens {given} is more than this server's limit of {cap}", "max_tokens")
    if cap is not None and given is None:
        default = body.max_tokens if body.max_tokens is not None else capacity - longest + 1
        body.max_tokens = max(1, min(cap, default))
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > limits.max_stop:
        raise LimitError(400, f"{len(stops)} stop strings, more than this server's limit of {limits.max_stop}", "stop")
    for s in stops:
        if len(s) > limits.max_stop_length:
            raise LimitError(400, f"a stop string of {len(s)} characters, longer than this server's limit of "
                                  f"{limits.max_stop_length}", "stop")


Send = Callable[[dict], Awaitable[None]]


class LimitsMiddleware:
    """Authentication, body size, in-flight bound and deadline (see the module docstring)."""

    def __init__(self, app: Any, limits: ServerLimits, max_running: int) -> None:
        self.app, self.limits = app, limits
        self.keys = [k.encode() for k in limits.keys()]
        self.capacity = max_running + limits.max_waiting
        self.in_flight = 0  # generating requests admitted and not finished (one event loop: no lock)
        self.refused = 0  # 429s answered

    async def __call__(self, scope: dict, receive: Callable, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        try:
            self.authenticate(scope, path)
            if path not in BODY_PATHS:
                return await self.app(scope, receive, send)
            body = await self.read_body(scope, receive)
            if path not in GENERATE_PATHS:
                return await self.app(scope, _replay(body, receive), send)
            if self.in_flight >= self.capacity:
                self.refused += 1
                raise LimitError(429, f"the server is at capacity ({self.capacity} requests running or waiting); "
                                      "retry later", kind="rate_limit_error", code="rate_limit_exceeded")
        except LimitError as e:
            return await _send_error(send, e)
        self.in_flight += 1
        try:
            await self.run(scope, _replay(body, receive), send)
        finally:
            self.in_flight -= 1

    def authenticate(self, scope: dict, path: str) -> None:
        if not self.keys or path in OPEN_PATHS or (path == "/metrics" and not self.limits.metrics_need_key):
            return
        auth = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, key = auth.partition(b" ")
        given = key.strip()
        if scheme.lower() != b"bearer" or not any(hmac.compare_digest(given, k) for k in self.keys):
            raise LimitError(401, "missing or invalid API key: send `Authorization: Bearer KEY`" if not given
                             else "invalid API key", code="invalid_api_key")

    async def read_body(self, scope: dict, receive: Callable) -> bytes:
        limit = self.limits.max_body_bytes
        too_large = LimitError(413, f"the request body is larger than this server's limit of {limit} bytes",
                               code="request_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise too_large if length.isdigit() else LimitError(400, "invalid Content-Length header")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def run(self, scope: dict, receive: Callable, send: Send) -> None:
        """The app, cancelled at the deadline (its sequences are aborted by the cancellation)."""
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        timeout = self.limits.request_timeout or None
        try:
            await asyncio.wait_for(self.app(scope, receive, tracking_send), timeout)
        except asyncio.TimeoutError:
            if not started:
                await _send_error(send, LimitError(408, f"the request ran past this server's deadline of "
                                                        f"{timeout:g} s", code="deadline_exceeded"))
            else:  # a stream under way: end it where it is
                await send({"type": "http.response.body", "body": b"", "more_body": False})


def _replay(body: bytes, receive: Callable) -> Callable:
    """A receive that gives the app the body already read, then waits on the real one (for the
    client's disconnect)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


async def _send_error(send: Send, e: LimitError) -> None:
    headers = [(b"content-type", b"application/json")]
    if e.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if e.status == 429:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": e.status, "headers": headers})
    await send({"type": "http.response.body", "body": e.body(), "more_body": False})


def install_limits(app: Any, limits: ServerLimits, max_running: int) -> None:
    """Wrap `app` (FastAPI) in the limits, and CORS outside them when origins are given (a
    browser's preflight carries no key). `app.state.limits` holds the limits and, once the app
    has started, `app.state.limit_counters["m"]` the middleware (its counters)."""
    from fastapi.middleware.cors import CORSMiddleware

    holder: dict[str, LimitsMiddleware] = {}

    def make(inner: Any) -> LimitsMiddleware:
        holder["m"] = LimitsMiddleware(inner, limits, max_running)
        return holder["m"]

    app.add_middleware(_Factory, make=make)
    if limits.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(limits.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.state.limits = limits
    app.state.limit_counters = holder


class _Factory:
    """Starlette builds middleware when the app starts: this hands the built one back."""

    def __new__(cls, app: Any, make: Callable[[Any], LimitsMiddleware]) -> LimitsMiddleware:
        return make(app)
