"""The servers the benchmarks start and time: `optimize serve` and llama.cpp's llama-server.

Both run as subprocesses on 127.0.0.1 and count as started once `GET /health` answers 200.

    with optimize_serve(engine, "--threads", "2") as server:   # server.base, .proc, .log
        ...
    with llama_server(binary, gguf, threads=2, parallel=4, context=4096, port=8089) as command:
        first, last, tokens = stream_completion(8089, prompt_ids, 128, cache_prompt=True)

Used by soak.py, reliability.py and ray_serve.py (`optimize serve`), and by speculative.py,
prefix_cache.py and chat_workloads.py (llama-server). Import it as `_servers` (benchmarks/ is
on the path of a script run from it) or as `benchmarks._servers`.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import httpx2 as httpx

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(proc: subprocess.Popen, healthy: Callable[[], bool], timeout: float, poll: float,
                       failed: Callable[[str], Exception]) -> None:
    """Poll `healthy` every `poll` s until it holds; `failed(why)` is raised if the process exits
    first or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while not healthy():
        if proc.poll() is not None:
            raise failed(f"exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise failed(f"did not become healthy within {timeout:g} s")
        time.sleep(poll)


# -- optimize serve ----------------------------------------------------------------------------
@dataclass
class Served:
    proc: subprocess.Popen
    base: str  # http://127.0.0.1:PORT
    log: str  # the server's stdout and stderr


def start_optimize_serve(engine: str | Path, *serve_args: str, timeout: float = 180, poll: float = 0.2,
                         health_timeout: float | None = None, new_session: bool = False,
                         log_prefix: str = "serve-", cwd: Path | None = None) -> Served:
    """`optimize serve ENGINE --port P --no-verify --model-name m SERVE_ARGS` on a free port,
    its output in a temporary file (a full pipe would block it), returned once /health answers.
    `new_session`: its own process group (Ray's driver and workers); `cwd`: where it runs (paths
    in the arguments are relative to it; default: here). SystemExit with the end of its log if it
    exits or is not healthy within `timeout` s."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w+", prefix=log_prefix, suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "optimizer.cli", "serve", str(engine), "--port", str(port),
                             "--no-verify", "--model-name", "m", *serve_args],
                            stdout=log, stderr=subprocess.STDOUT, text=True, cwd=cwd, start_new_session=new_session)

    def healthy() -> bool:
        try:
            kwargs = {} if health_timeout is None else {"timeout": health_timeout}
            return httpx.get(base + "/health", **kwargs).status_code == 200
        except httpx.TransportError:
            return False

    def failed(why: str) -> SystemExit:
        stop_server(proc, signal.SIGINT if new_session else signal.SIGTERM)
        return SystemExit(f"the server did not start ({why}):\n" + Path(log.name).read_text()[-3000:])

    wait_until_healthy(proc, healthy, timeout, poll, failed)
    return Served(proc, base, log.name)


def stop_server(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
    """Send `sig` (SIGINT: Ray's driver shuts its cluster down as on Ctrl-C), wait, kill if it lingers."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def optimize_serve(engine: str | Path, *serve_args: str, sig: int = signal.SIGTERM, stop_timeout: float = 60,
                   **start: object) -> Iterator[Served]:
    """`start_optimize_serve` for the length of a with-block, stopped by `sig` afterwards."""
    server = start_optimize_serve(engine, *serve_args, **start)
    try:
        yield server
    finally:
        stop_server(server.proc, sig, stop_timeout)


def metric(text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples (every label set) in /metrics text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- llama.cpp's llama-server ------------------------------------------------------------------
def llama_server_command(binary: str, gguf: str, threads: int, parallel: int, context: int, port: int,
                         cache_prompt: bool, extra: Sequence[str] = ()) -> list[str]:
    """llama-server on 127.0.0.1:`port` with `parallel` slots sharing `context` positions."""
    return [binary, "-m", gguf, "-t", str(threads), "-tb", str(threads), "-np", str(parallel), "-c", str(context),
            "--host", "127.0.0.1", "--port", str(port), *(["--cache-prompt"] if cache_prompt else []),
            "--no-warmup", *extra]


def llama_healthy(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False


@contextmanager
def llama_server(binary: str, gguf: str, threads: int, parallel: int, context: int, port: int,
                 cache_prompt: bool, extra: Sequence[str] = ()) -> Iterator[list[str]]:
    """llama-server (`llama_server_command`) for the length of a with-block, once healthy (within
    120 s, else RuntimeError with the end of its stderr); yields its command line."""
    command = llama_server_command(binary, gguf, threads, parallel, context, port, cache_prompt, extra)
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def failed(why: str) -> RuntimeError:
            if server.poll() is not None:
                return RuntimeError(f"llama-server exited: {server.stderr.read()[-2000:]}")
            return RuntimeError(f"llama-server {why}")

        wait_until_healthy(server, lambda: llama_healthy(port), 120, 0.5, failed)
        yield command
    finally:
        server.terminate()
        server.wait(timeout=30)


def stream_completion(port: int, prompt: list[int], n_predict: int, cache_prompt: bool,
                      start: float = 0.0) -> tuple[float, float, list[int]]:
    """One streamed greedy completion of token ids through llama-server's /completion (EOS
    ignored): the times of its first and last token (time.perf_counter() - `start`), and the
    tokens."""
    body = {"prompt": prompt, "n_predict": n_predict, "temperature": 0.0, "top_k": 1, "ignore_eos": True,
            "cache_prompt": cache_prompt, "stream": True, "return_tokens": True}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"llama-server answered {response.status}: {response.read()[:500]!r}")
    first, tokens = None, []
    for line in response:
        if not line.startswith(b"data:"):
            continue
        chunk = json.loads(line[5:])
        if chunk.get("tokens"):
            first = first or time.perf_counter() - start
            tokens += chunk["tokens"]
        if chunk.get("stop"):
            break
    last = time.perf_counter() - start
    connection.close()
    return first, last, tokens
