"""Ray Serve replicas against one process, and a soak with a replica killed mid-run.

    python benchmarks/ray_serve.py ENGINE --out benchmarks/results/ray-serve/ [--rounds 3]

Throughput: the same HTTP workload (--requests completions of --max-tokens tokens, ignore_eos,
greedy, --concurrency clients) against `optimize serve ENGINE --threads 2` (one process) and
`optimize serve ENGINE --replicas 2 --threads 1` (Ray Serve), alternating, --rounds times each;
output tokens per second from the clients' side, median and spread.

Soak: benchmarks/soak.py's clients (--soak-requests, half streamed, 30% hanging up at a random
moment) against the 2 replicas; one replica process is SIGKILLed --kill-after seconds in. Every
request must be answered, aborted by its client, or refused with a clear error (503
replica_unavailable, or a stream ending in an SSE error replica_died); none may hang (a client
timeout fails it); afterwards every replica (the restarted one included) holds no cache and
/health is ok.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

sys.path.insert(0, str(Path(__file__).parent))
import soak  # noqa: E402  (the soak's client)
from _servers import start_optimize_serve, stop_server  # noqa: E402

PEERS = {"one process x 2 threads": ["--threads", "2"],
         "2 replicas x 1 thread (Ray Serve)": ["--replicas", "2", "--threads", "1"]}


def start(engine: str, extra: list[str]) -> tuple[subprocess.Popen, str, str]:
    """`optimize serve` in its own process group (Ray's driver and workers), once healthy."""
    server = start_optimize_serve(engine, *extra, timeout=240, poll=0.3, health_timeout=5, new_session=True,
                                  log_prefix="ray-bench-")
    return server.proc, server.base, server.log


def stop(proc: subprocess.Popen) -> None:
    stop_server(proc, signal.SIGINT)  # Ray's driver shuts the cluster down on Ctrl-C


async def workload(base: str, n: int, concurrency: int, max_tokens: int) -> tuple[float, int]:
    limit = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(http: httpx.AsyncClient, i: int) -> None:
        nonlocal tokens
        async with limit:
            r = await http.post(base + "/v1/completions", json={
                "model": "m", "prompt": soak.PROMPTS[i % len(soak.PROMPTS)] + f" ({i})", "max_tokens": max_tokens,
                "temperature": 0, "ignore_eos": True})
            r.raise_for_status()
            tokens += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600) as http:
        await one(http, -1)  # warm up
        tokens = 0
        begin = time.perf_counter()
        await asyncio.gather(*(one(http, i) for i in range(n)))
        return time.perf_counter() - begin, tokens


def replica_pids(server: subprocess.Popen) -> list[int]:
    """The Ray Serve replica processes of our engine (their process titles name the deployment)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines() if "ServeReplica:optimizer:engine" in line]


def labelled(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def soak_with_kill(base: str, args: argparse.Namespace, server: subprocess.Popen) -> dict:
    pids = replica_pids(server)

    async def kill() -> None:
        await asyncio.sleep(args.kill_after)
        os.kill(pids[0], signal.SIGKILL)

    begin = time.perf_counter()
    outcomes, _ = await asyncio.gather(
        asyncio.wait_for(soak.run(base, args.soak_requests, args.concurrency, 0.3, args.soak_max_tokens, 0),
                         args.hang_timeout), kill())
    return {"seconds": round(time.perf_counter() - begin, 1), "outcomes": outcomes, "replicas_before": len(pids),
            "killed_pid": pids[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engine")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--soak-requests", type=int, default=1000)
    ap.add_argument("--soak-max-tokens", type=int, default=32)
    ap.add_argument("--kill-after", type=float, default=10.0)
    ap.add_argument("--hang-timeout", type=float, default=1200.0, help="the whole soak fails past this")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    results: dict = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
                     "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                     "throughput": {}, "soak": None}
    if not args.skip_throughput:
        runs: dict[str, list[float]] = {name: [] for name in PEERS}
        servers = {name: start(args.engine, extra) for name, extra in PEERS.items()}  # both up, used in turn
        try:
            for _ in range(args.rounds):
                for name, (_, base, _) in servers.items():
                    seconds, tokens = asyncio.run(workload(base, args.requests, args.concurrency, args.max_tokens))
                    runs[name].append(tokens / seconds)
                    print(f"{name}: {tokens / seconds:.1f} tok/s", flush=True)
        finally:
            for proc, _, _ in servers.values():
                stop(proc)
        for name, rates in runs.items():
            results["throughput"][name] = {"median_tok_s": round(statistics.median(rates), 1),
                                           "min": round(min(rates), 1), "max": round(max(rates), 1),
                                           "runs": [round(r, 1) for r in rates]}
        one, ray = (results["throughput"][n]["median_tok_s"] for n in PEERS)
        results["ratio_replicas_vs_one_process"] = round(ray / one, 3)

    proc, base, log = start(args.engine, PEERS["2 replicas x 1 thread (Ray Serve)"])
    try:
        soak_result = asyncio.run(soak_with_kill(base, args, proc))
        time.sleep(3.0)  # aborts reach the engines; replicas post their metrics every second
        deadline = time.monotonic() + 120
        while len(replica_pids(proc)) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(3.0)
        text = httpx.get(base + "/metrics").text
        health = httpx.get(base + "/health")
        outcomes = soak_result["outcomes"]
        clear = {"answered", "aborted by client", "http 503 replica_unavailable", "stream error replica_died"}
        soak_result.update({
            "replicas_after": len(replica_pids(proc)),
            "running": labelled(text, "optimizer_running_requests"),
            "kv_cache_usage": labelled(text, "optimizer_kv_cache_usage_ratio"),
            "engine_errors": labelled(text, "optimizer_requests_total", finish_reason="error"),
            "health": health.json(), "server_log": log})
        soak_result["checks"] = {
            "every request answered, aborted by its client, or refused with a clear error":
                set(outcomes) <= clear and sum(outcomes.values()) == args.soak_requests,
            "killed replica restarted": soak_result["replicas_after"] == 2,
            "nothing running, cache empty": soak_result["running"] == 0 and soak_result["kv_cache_usage"] == 0,
            "healthy": health.status_code == 200,
        }
        results["soak"] = soak_result
    finally:
        stop(proc)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    sys.exit(0 if all(results["soak"]["checks"].values()) else 1)


if __name__ == "__main__":
    main()
