"""A serving workload and its statistics, shared by every system timed: the serving benchmark,
its onnxruntime-genai peer and `optimize report` (stdlib only, so the peer can import it
from its own interpreter with the repository on sys.path)."""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable


@dataclass
class Request:
    index: int
    prompt: list[int]
    output_tokens: int  # generated with EOS ignored: every system produces exactly this many
    arrival: float  # seconds after the start


def make_workload(corpus_ids: list[int], n: int = 32, prompt_range=(32, 256), output_range=(16, 256),
                  seed: int = 0, rate: float | None = None) -> list[Request]:
    """n requests with uniform prompt and output lengths; prompts are consecutive slices of real
    text; all arrive at t=0, or (rate = requests/s) with Poisson arrivals."""
    rng = random.Random(seed)
    requests, offset, t = [], 0, 0.0
    for i in range(n):
        length = rng.randint(*prompt_range)
        if offset + length > len(corpus_ids):
            offset = 0
        prompt = corpus_ids[offset:offset + length]
        offset += length
        if rate:
            t += rng.expovariate(rate)
        requests.append(Request(i, prompt, rng.randint(*output_range), t if rate else 0.0))
    return requests


def make_shared_prefix_workload(corpus_ids: list[int], n: int = 32, prefix_tokens: int = 512,
                                suffix_range=(8, 24), output_tokens: int = 32, seed: int = 0) -> list[Request]:
    """n requests sharing one `prefix_tokens`-token prefix (a system prompt: the corpus's first
    tokens), each followed by a distinct suffix (the slices of text after it), all at t=0."""
    rng = random.Random(seed)
    prefix, offset, requests = corpus_ids[:prefix_tokens], prefix_tokens, []
    for i in range(n):
        length = rng.randint(*suffix_range)
        requests.append(Request(i, prefix + corpus_ids[offset:offset + length], output_tokens, 0.0))
        offset += length
    if offset > len(corpus_ids):
        raise ValueError(f"the corpus has {len(corpus_ids)} tokens, the workload needs {offset}")
    return requests


def dump(requests: list[Request], path: str) -> None:
    with open(path, "w") as f:
        json.dump([asdict(r) for r in requests], f)


def load(path: str) -> list[Request]:
    with open(path) as f:
        return [Request(**r) for r in json.load(f)]


def run_static_batches(requests: list[Request], batch: int,
                       run_batch: Callable[[list[Request], float], None]) -> None:
    """Static batching: whenever the runtime is free, `run_batch(group, start)` runs the
    requests that have arrived (up to `batch`; if none has, it waits for the next) to the end."""
    queue = sorted(requests, key=lambda r: r.arrival)
    start = time.perf_counter()
    while queue:
        now = time.perf_counter() - start
        if queue[0].arrival > now:
            time.sleep(queue[0].arrival - now)
            now = time.perf_counter() - start
        group = [r for r in queue if r.arrival <= now][:batch]
        queue = [r for r in queue if r not in group]
        run_batch(group, start)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summarize(requests: list[Request], first_token: dict[int, float], last_token: dict[int, float],
              total_seconds: float, outputs: dict[int, list[int]] | None = None) -> dict:
    """Per-system figures from per-request times (seconds since the start)."""
    ttft = [first_token[r.index] - r.arrival for r in requests]
    tpot = [(last_token[r.index] - first_token[r.index]) / (r.output_tokens - 1)
            for r in requests if r.output_tokens > 1]
    out_tokens = sum(r.output_tokens for r in requests)
    result = {"requests": len(requests), "output_tokens": out_tokens, "total_s": total_seconds,
              "output_tok_s": out_tokens / total_seconds}
    for name, values in (("ttft_s", ttft), ("tpot_s", tpot)):
        for q in (50, 95, 99):
            result[f"{name}_p{q}"] = percentile(values, q)
        result[f"{name}_mean"] = statistics.fmean(values)
    if outputs is not None:
        result["outputs"] = {str(k): v for k, v in outputs.items()}
    return result
