"""Run one HTTP request through an ASGI app in this process and stream its response back.

A Ray Serve replica holds the same FastAPI app `optimize serve` runs (runtime.server); the
router hands it a request as plain values (method, path, query, headers, body) and gets
back, as an async iterator, first {"status", "headers"} and then the body's chunks as they
are sent (SSE streaming included). Leaving the iterator early tells the app the client went
away (http.disconnect), then cancels it: the server's own disconnect handling aborts the
engine request and frees its cache slot.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator

_DONE = {"type": "_done"}
DISCONNECT_GRACE_SECONDS = 1.0  # how long the app gets to notice the disconnect before it is cancelled


def http_scope(method: str, path: str, query: str, headers: list[tuple[str, str]]) -> dict[str, Any]:
    """The ASGI scope of one HTTP/1.1 request from a local client."""
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": method.upper(), "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": query.encode(), "root_path": "",
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80)}


async def call_asgi(app: Any, method: str, path: str, query: str, headers: list[tuple[str, str]],
                    body: bytes) -> AsyncIterator[Any]:
    """Yield {"status": int, "headers": [[name, value], ...]} and then the body's byte chunks."""
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    gone = asyncio.Event()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await messages.put(message)

    async def run() -> None:
        try:
            await app(http_scope(method, path, query, headers), receive, send)
        finally:
            await messages.put(_DONE)

    task = asyncio.ensure_future(run())
    try:
        while True:
            message = await messages.get()
            if message is _DONE:
                task.result()  # the app's exception, if it raised one
                raise RuntimeError(f"the app ended {method} {path} without a complete response")
            if message["type"] == "http.response.start":
                yield {"status": message["status"],
                       "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", [])]}
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield bytes(message["body"])
                if not message.get("more_body", False):
                    return
    finally:
        gone.set()
        if not task.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), DISCONNECT_GRACE_SECONDS)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
