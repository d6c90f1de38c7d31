"""Soak test of `optimize serve`: many requests over HTTP, clients hanging up at random.

    python benchmarks/soak.py ENGINE --requests 1000 --concurrency 48 --abort-fraction 0.3

Starts the server as a subprocess (127.0.0.1, a free port), then sends --requests
completions (half streamed, random prompt from a small pool, random max_tokens) from
--concurrency concurrent clients; a random --abort-fraction of them disconnect after a
random delay. Afterwards it reads /metrics and /health and checks that every request was
answered (HTTP 200 with a finish reason) or aborted by its client, that no request is
queued or running and the cache is empty, and that the server is healthy. Prints a JSON
summary; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import sys
import time
from pathlib import Path

import httpx2 as httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import metric, optimize_serve  # noqa: E402

PROMPTS = ["The history of the city", "In a small village there lived", "The results of the experiment show",
           "Write a list of fruits:", "Once upon a time", "The most important part of a computer is"]


def error_code(response: httpx.Response) -> str:
    """The OpenAI-shaped error's code of a refused request, or '' where the body has none."""
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


async def client(http: httpx.AsyncClient, base: str, rng: random.Random, i: int, abort_fraction: float,
                 max_tokens: int) -> str:
    """One request, its outcome in a word: answered, aborted by client (it gave up at a random
    moment), http STATUS [CODE], stream error CODE (a stream ended by an error event: a replica
    that died, for ray_serve.py), no finish reason, bad finish, or (in run) error EXCEPTION."""
    body = {"model": "m", "prompt": rng.choice(PROMPTS) + f" ({i})", "max_tokens": rng.randint(1, max_tokens),
            "temperature": rng.choice([0.0, 0.8]), "seed": i, "stream": rng.random() < 0.5}
    abort_after = rng.uniform(0.01, 2.0) if rng.random() < abort_fraction else None

    async def call() -> str:
        if not body["stream"]:
            r = await http.post(base + "/v1/completions", json=body)
            if r.status_code != 200:
                return f"http {r.status_code} {error_code(r)}".rstrip()
            return "answered" if r.json()["choices"][0]["finish_reason"] in ("stop", "length") else "bad finish"
        reason = None
        async with http.stream("POST", base + "/v1/completions", json=body) as r:
            if r.status_code != 200:
                return f"http {r.status_code}"
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    if "error" in event:
                        return f"stream error {event['error'].get('code', '')}".rstrip()
                    reason = event["choices"][0]["finish_reason"] or reason
        return "answered" if reason in ("stop", "length") else f"no finish reason ({reason})"

    if abort_after is None:
        return await call()
    try:
        return await asyncio.wait_for(call(), abort_after)
    except asyncio.TimeoutError:
        return "aborted by client"


async def run(base: str, n: int, concurrency: int, abort_fraction: float, max_tokens: int, seed: int) -> dict:
    rng = random.Random(seed)
    limit = asyncio.Semaphore(concurrency)
    outcomes: dict[str, int] = {}

    async def one(http: httpx.AsyncClient, i: int) -> None:
        async with limit:
            try:
                outcome = await client(http, base, rng, i, abort_fraction, max_tokens)
            except Exception as e:  # a transport error is a failure of the server
                outcome = f"error {type(e).__name__}"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency * 2)) as http:
        await asyncio.gather(*(one(http, i) for i in range(n)))
    return outcomes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engine")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=48)
    ap.add_argument("--abort-fraction", type=float, default=0.3)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--serve-args", default="", help="more options for `optimize serve`, one string, "
                    "e.g. \"--provider cuda --gpu-memory-fraction 0.5\"")
    args = ap.parse_args()

    with optimize_serve(args.engine, "--threads", str(args.threads), *shlex.split(args.serve_args), timeout=120,
                        stop_timeout=30, log_prefix="soak-server-") as server:
        base = server.base
        start = time.perf_counter()
        outcomes = asyncio.run(run(base, args.requests, args.concurrency, args.abort_fraction, args.max_tokens,
                                   args.seed))
        seconds = time.perf_counter() - start
        time.sleep(1.0)  # the last aborts reach the engine loop
        text = httpx.get(base + "/metrics").text
        health = httpx.get(base + "/health")
        summary = {
            "requests": args.requests, "seconds": round(seconds, 1), "outcomes": outcomes,
            "server": {"requests_by_finish_reason": {
                reason: metric(text, f'optimizer_requests_total{{finish_reason="{reason}"}}')
                for reason in ("stop", "length", "abort", "error")},
                "running": metric(text, "optimizer_running_requests"),
                "queued": metric(text, "optimizer_queue_length"),
                "kv_cache_usage": metric(text, "optimizer_kv_cache_usage_ratio"),
                "output_tokens": metric(text, "optimizer_output_tokens_total")},
            "health": health.json(),
            "server_log": server.log,
            "server_log_lines": sum(1 for _ in open(server.log)),
        }
        accounted = outcomes.get("answered", 0) + outcomes.get("aborted by client", 0)
        checks = {
            "every request answered or aborted by its client": accounted == args.requests,
            "nothing running or queued": summary["server"]["running"] == 0 and summary["server"]["queued"] == 0,
            "cache empty": summary["server"]["kv_cache_usage"] == 0,
            "server healthy": health.status_code == 200,
            "no engine errors": summary["server"]["requests_by_finish_reason"]["error"] == 0,
        }
        summary["checks"] = checks
    print(json.dumps(summary, indent=1))
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
