"""Reliability benchmark (issue 27): overload, fuzzed requests and the build's fault matrix.

    python benchmarks/reliability.py --engine ENGINE16 --phases overload,fuzz,faults --out DIR

- overload: `optimize serve ENGINE --max-waiting 64`, then --connections (1,000) requests at
  once (half streamed, up to 16 tokens each) while /health is polled every 100 ms on its own
  connection and the server's resident memory sampled: every request must get 200 or 429,
  /health must answer within 1 s throughout, and nothing may be left running or cached.
- fuzz: a warm-up to the largest shapes the fuzzer can send (every slot prefilling a full
  prompt, 64 choices decoding, echo logprobs of a full prompt, chat, structured outputs), then
  --fuzz-requests (2,000) requests drawn from the server's own OpenAPI document
  (tests/api_fuzz.py), one at a time, against a tiny engine (built into DIR; fast enough that
  the bodies, not the model, set the pace), once per --fuzz-seeds seed (0,1,2: a different
  draw each, 6,000 in all): 0 answers >= 500, 0 hangs (60 s), the cache empty, and the server's
  memory after each round within 10% of after the warm-up.
- faults: a tiny build killed with SIGKILL at each stage (tests/kill_at.py), retried into the
  same --out: nothing loadable, staging debris never more than one directory, then a clean
  build; and, where this process may mount a tmpfs (root), a build into a 2 MB one (ENOSPC).

Writes DIR/{overload,fuzz,faults}.json and prints each; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._servers import metric, optimize_serve  # noqa: E402


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


@contextmanager
def served(engine: Path, *serve_args: str):
    """`optimize serve ENGINE SERVE_ARGS` (benchmarks/_servers.py): yields (base url, process, log path)."""
    with optimize_serve(engine, *serve_args, log_prefix="reliability-server-", cwd=ROOT) as server:
        yield server.base, server.proc, server.log


def server_state(base: str) -> dict:
    text = httpx.get(base + "/metrics").text
    return {"running": metric(text, "optimizer_running_requests"), "queued": metric(text, "optimizer_queue_length"),
            "kv_cache_usage": metric(text, "optimizer_kv_cache_usage_ratio"),
            "errors": metric(text, 'optimizer_requests_total{finish_reason="error"}'),
            "cached_grammars": metric(text, "optimizer_structured_output_cached_grammars"),
            "health": httpx.get(base + "/health").status_code}


def settle(base: str, seconds: float = 30) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        state = server_state(base)
        if (state["running"] == 0 and state["queued"] == 0 and state["kv_cache_usage"] == 0) \
                or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


# -- overload ----------------------------------------------------------------------------------
def poll_health(base: str, pid: int, stop: "multiprocessing.synchronize.Event", out: str) -> None:
    """In its own process (the client's event loop is busy with 1,000 requests): GET /health every
    100 ms with a 5 s timeout, and the server's RSS; writes the samples to `out` when `stop` is set."""
    latencies, failures, rss = [], 0, []
    with httpx.Client(timeout=5) as http:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                ok = http.get(base + "/health").status_code == 200
            except Exception:
                ok = False
            latencies.append(time.perf_counter() - start)
            failures += not ok
            rss.append(rss_bytes(pid))
            time.sleep(0.1)
    Path(out).write_text(json.dumps({"latencies": latencies, "failures": failures, "rss": rss}))


async def send_all(base: str, connections: int, max_tokens: int) -> dict[str, int]:
    codes: dict[str, int] = {}

    async def one(http: httpx.AsyncClient, i: int) -> None:
        body = {"model": "m", "prompt": f"Request number {i} says", "max_tokens": 1 + i % max_tokens,
                "temperature": 0, "stream": i % 2 == 0}
        try:
            if body["stream"]:
                async with http.stream("POST", base + "/v1/completions", json=body) as r:
                    async for _ in r.aiter_lines():
                        pass
                    key = str(r.status_code)
            else:
                key = str((await http.post(base + "/v1/completions", json=body)).status_code)
        except Exception as e:  # a transport error: the server failed this request
            key = type(e).__name__
        codes[key] = codes.get(key, 0) + 1

    limits = httpx.Limits(max_connections=connections + 10, max_keepalive_connections=connections + 10)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(*(one(http, i) for i in range(connections)))
    return codes


def overload_run(base: str, pid: int, connections: int, max_tokens: int) -> dict:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    samples = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    poller = ctx.Process(target=poll_health, args=(base, pid, stop, samples))
    poller.start()
    time.sleep(0.5)  # a few polls of the idle server first
    start = time.perf_counter()
    codes = asyncio.run(send_all(base, connections, max_tokens))
    seconds = time.perf_counter() - start
    stop.set()
    poller.join(timeout=30)
    polled = json.loads(Path(samples).read_text())
    health = sorted(polled["latencies"])
    return {"seconds": round(seconds, 1), "status_codes": codes, "health_polls": len(health),
            "health_failures": polled["failures"], "health_latency_s": {
                "p50": round(health[len(health) // 2], 4), "p99": round(health[int(len(health) * 0.99)], 4),
                "max": round(health[-1], 4)}, "rss_peak_sampled_mb": round(max(polled["rss"]) / 1e6, 1)}


def overload(engine: Path, connections: int, max_waiting: int, max_tokens: int, threads: int) -> dict:
    with served(engine, "--max-waiting", str(max_waiting), "--threads", str(threads)) as (base, server, log):
        idle = rss_bytes(server.pid)
        result = overload_run(base, server.pid, connections, max_tokens)
        state = settle(base)
        result.update(engine=str(engine), connections=connections, max_waiting=max_waiting,
                      rss_idle_mb=round(idle / 1e6, 1), rss_high_water_mb=round(rss_bytes(server.pid, "VmHWM") / 1e6, 1),
                      after=state, server_log=log)
    answered = sum(n for code, n in result["status_codes"].items() if code in ("200", "429"))
    result["checks"] = {"every request answered 200 or 429": answered == connections,
                        "/health within 1 s throughout": result["health_latency_s"]["max"] < 1.0
                        and result["health_failures"] == 0,
                        "nothing running, queued or cached after": state["running"] == state["queued"]
                        == state["kv_cache_usage"] == 0,
                        "no engine errors, healthy": state["errors"] == 0 and state["health"] == 200}
    return result


# -- fuzz --------------------------------------------------------------------------------------
def tiny_engine(work: Path) -> Path:
    out = work / "tiny-engine"
    if not (out / "manifest.json").exists():
        from optimizer.core.assets import cache_dir, fetch_asset
        from optimizer.pipeline import BuildOptions, build_engine
        from transformers import AutoTokenizer

        tok_dir = cache_dir() / "test" / "smollm2-tokenizer"
        if not (tok_dir / "tokenizer.json").exists():
            gguf = fetch_asset("smollm2-135m", quiet=True)
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tok_dir)
        build_engine(BuildOptions(out=out, random_weights=True, config="tiny-llama", tokenizer=str(tok_dir),
                                  quiet=True, kv_slots=4, kv_capacity=96))
    return out


WARMUP_SCHEMAS = 32  # distinct JSON schemas compiled during the warm-up (llguidance's tokenizer built once)


def warm_up(base: str, capacity: int, slots: int) -> dict[str, int]:
    """Requests that take the server to the largest shapes the fuzzer can send, so that what
    grows once (onnxruntime's arena at the largest prefill / decode batch and the echo pass at a
    full-capacity prompt, llguidance's tokenizer, the chat template, lazy imports) has grown
    before memory is measured: answers by status code."""
    codes: dict[str, int] = {}
    full = [[7 + (i + j) % 500 for j in range(capacity - 1)] for i in range(slots)]  # distinct: none cached
    bodies = [("/v1/completions", {"model": "m", "prompt": full, "max_tokens": 1}),  # every slot prefilling
              ("/v1/completions", {"model": "m", "prompt": full[0][:capacity // 2], "n": 64,
                                   "max_tokens": capacity - capacity // 2, "ignore_eos": True,
                                   "temperature": 1.0, "logprobs": 5}),  # every slot decoding, 64 choices
              ("/v1/completions", {"model": "m", "prompt": full[0], "echo": True, "logprobs": 5, "max_tokens": 1}),
              ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                        "max_tokens": 4, "logprobs": True, "top_logprobs": 5})]
    bodies += [("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "json"}],
                                         "max_tokens": 4, "response_format": {"type": "json_schema", "json_schema": {
                                             "name": "w", "schema": {"type": "object", "properties": {
                                                 f"key{i}": {"type": "integer"}}, "required": [f"key{i}"]}}}})
               for i in range(WARMUP_SCHEMAS)]
    for path, body in bodies:
        key = str(httpx.post(base + path, json=body, timeout=300).status_code)
        codes[key] = codes.get(key, 0) + 1
    return codes


def fuzz(engine: Path, requests: int, seeds: list[int]) -> dict:
    """Fuzzed requests through one server: a warm-up (`warm_up`), then `requests` requests per
    seed (a different draw each), the server's RSS after the warm-up, every 250 requests and
    after each round (once the engine loop has been idle long enough to give the allocator's
    free memory back). A leak grows with every round; a bounded warm-up does not."""
    from hypothesis import HealthCheck, given, seed, settings, strategies as st

    from runtime.async_engine import TRIM_AFTER_IDLE_SECONDS
    from tests.api_fuzz import request_bodies

    codes: dict[str, int] = {}
    hangs, server_errors, trajectory = 0, [], []
    with served(engine, "--threads", "1", "--max-body-bytes", str(64 << 10)) as (base, server, log):
        openapi = httpx.get(base + "/openapi.json").json()
        paths = ["/v1/completions", "/v1/chat/completions"]
        bodies = st.sampled_from(paths).flatmap(lambda p: st.tuples(st.just(p), request_bodies(openapi, p, "m")))
        count = [0]

        def idle_rss() -> int:
            settle(base)
            time.sleep(TRIM_AFTER_IDLE_SECONDS + 1)  # the idle loop trims the allocator
            return rss_bytes(server.pid)

        rss_start = rss_bytes(server.pid)
        manifest = json.loads((engine / "manifest.json").read_text())["kv_cache"]
        warmup = warm_up(base, manifest["slot_capacity"], manifest["slots"])
        rss_before = idle_rss()
        start = time.perf_counter()

        def one(case: tuple[str, bytes]) -> None:
            nonlocal hangs
            path, body = case
            try:
                r = httpx.post(base + path, content=body, headers={"Content-Type": "application/json"}, timeout=60)
                key = str(r.status_code)
                if r.status_code >= 500:
                    server_errors.append({"path": path, "body": body[:500].decode(errors="replace"),
                                          "answer": r.text[:300]})
            except httpx.TimeoutException:
                hangs += 1
                key = "timeout"
            codes[key] = codes.get(key, 0) + 1
            count[0] += 1
            if count[0] % 250 == 0:
                trajectory.append((count[0], round(rss_bytes(server.pid) / 1e6, 1)))

        after, grammars = [], [server_state(base)["cached_grammars"]]
        for s in seeds:
            seed(s)(settings(max_examples=requests, deadline=None, database=None, suppress_health_check=list(
                HealthCheck), phases=["generate"])(given(case=bodies)(one)))()
            after.append(idle_rss())
            grammars.append(server_state(base)["cached_grammars"])
        seconds = time.perf_counter() - start
        state = settle(base)
    growth = [a / rss_before - 1 for a in after]
    return {"engine": str(engine), "requests": count[0], "seeds": seeds, "seconds": round(seconds, 1),
            "warmup_status_codes": warmup, "status_codes": codes, "server_errors": server_errors[:20], "hangs": hangs,
            "rss_at_start_mb": round(rss_start / 1e6, 1), "rss_after_warmup_mb": round(rss_before / 1e6, 1),
            "rss_after_each_round_mb": [round(a / 1e6, 1) for a in after],
            "rss_growth_after_each_round": [round(g, 4) for g in growth],
            "rss_every_250_requests_mb": trajectory, "cached_grammars_after_warmup_and_each_round": grammars,
            "after": state, "server_log": log,
            "checks": {"0 answers >= 500": not server_errors, "0 hangs": hangs == 0,
                       "memory after every round within 10% of after the warm-up": all(abs(g) <= 0.10 for g in growth),
                       "cache empty, nothing running, healthy": state["kv_cache_usage"] == 0 and state["running"] == 0
                       and state["health"] == 200 and state["errors"] == 0}}


# -- faults ------------------------------------------------------------------------------------
BUILD = ["model", "--random-weights", "--config", "tiny-llama", "--quant", "int4", "--method", "rtn", "-q"]
STAGES = ("load", "quantize", "capture", "write", "verify", "checksum", "write", "checksum")


def faults(work: Path) -> dict:
    from optimizer.core.artifact import load_engine
    from optimizer.core.errors import EngineError

    out = work / "faults" / "engine"
    shutil.rmtree(out.parent, ignore_errors=True)
    out.parent.mkdir(parents=True)

    def debris() -> list[str]:
        return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")
                      and not p.name.endswith(".lock"))

    def loadable() -> bool:
        try:
            load_engine(out)
            return True
        except EngineError:
            return False

    rows = []
    for stage in STAGES:
        proc = subprocess.run([sys.executable, "-m", "tests.kill_at", stage, *BUILD, "--out", str(out)],
                              cwd=ROOT, capture_output=True, text=True)
        rows.append({"stage": stage, "killed": proc.returncode == -signal.SIGKILL, "loadable": loadable(),
                     "debris": debris()})
    proc = subprocess.run([sys.executable, "-m", "optimizer.cli", *BUILD, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    final = {"exit": proc.returncode, "loadable": loadable(), "debris": debris(), "stderr": proc.stderr[-500:]}
    enospc = full_disk(work)
    return {"kills": rows, "clean_build_after": final, "full_disk": enospc,
            "checks": {"every kill: nothing loadable": all(r["killed"] and not r["loadable"] for r in rows),
                       "debris never more than one directory": all(len(r["debris"]) <= 1 for r in rows),
                       "the next build succeeds and clears it": final["exit"] == 0 and final["loadable"]
                       and not final["debris"],
                       "a full disk: clear error, nothing written": enospc.get("ok", True)}}


def full_disk(work: Path) -> dict:
    """Builds into small tmpfs mounts, where this process may mount one (root): one too small for
    the weights (refused before writing) and one that fills while the files are written (ENOSPC)."""
    from optimizer.core.assets import cache_dir

    reference = work / "faults" / "engine" / "model.onnx"  # the clean build's graph and weights
    tokenizer = cache_dir() / "test" / "smollm2-tokenizer"  # 3.5 MB more to write, made by tiny_engine()
    sizes = {"smaller than the weights": 1 << 20, "fills while writing": reference.stat().st_size + (256 << 10)}
    results = {}
    for name, size in sizes.items():
        mount = work / "tmpfs"
        mount.mkdir(exist_ok=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True).returncode:
            return {"skipped": "cannot mount a tmpfs here (needs root); tests/test_build_faults.py injects ENOSPC"}
        try:
            proc = subprocess.run([sys.executable, "-m", "optimizer.cli", *BUILD, "--tokenizer", str(tokenizer),
                                   "--out", str(mount / "engine")], cwd=ROOT, capture_output=True, text=True)
            left = sorted(p.name for p in mount.iterdir())
            error = next((line for line in proc.stderr.splitlines() if line.startswith("error:")), "")
            results[name] = {"tmpfs_bytes": size, "exit": proc.returncode, "error": error, "left_on_disk": left,
                             "ok": proc.returncode == 2 and bool(error) and not left and "Traceback" not in proc.stderr}
        finally:
            subprocess.run(["umount", str(mount)], capture_output=True)
    results["ok"] = all(r["ok"] for r in results.values())
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", type=Path, help="the engine for the overload phase (16 slots: --kv-slots 16)")
    ap.add_argument("--phases", default="overload,fuzz,faults")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "reliability-work")
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--max-waiting", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fuzz-requests", type=int, default=2000)
    ap.add_argument("--fuzz-seeds", default="0,1,2", help="one round of --fuzz-requests per hypothesis seed, "
                    "each a different draw")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    ok = True
    for phase in args.phases.split(","):
        if phase == "overload":
            if args.engine is None:
                raise SystemExit("--engine is needed for the overload phase")
            result = overload(args.engine, args.connections, args.max_waiting, args.max_tokens, args.threads)
        elif phase == "fuzz":
            result = fuzz(tiny_engine(args.work), args.fuzz_requests, [int(x) for x in args.fuzz_seeds.split(",")])
        elif phase == "faults":
            tiny_engine(args.work)  # (and the tokenizer the full-disk builds write)
            result = faults(args.work)
        else:
            raise SystemExit(f"unknown phase {phase!r}: overload, fuzz, faults")
        result["machine"] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
        (args.out / f"{phase}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(phase, json.dumps(result["checks"]), flush=True)
        ok = ok and all(result["checks"].values())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
