"""Replay a timed workload (optimizer.workload) through the continuous-batching engine: every
request is added at its arrival time, the engine steps while it has work, and the per-request
first/last token times give TTFT, TPOT and output tokens/s (optimizer.workload.summarize), and
the prompt tokens the prefix cache served."""

from __future__ import annotations

import time
from typing import Any

from optimizer.workload import Request, summarize
from runtime.sampling import SamplingParams


def replay(engine: Any, requests: list[Request], max_batch: int | None = None,
           prefill_chunk: int | None = None, capacity: int | None = None,
           prefill_budget: int | None = None, prefix_caching: bool = True,
           gpu_memory_fraction: float | None = None, temperature: float = 0.0,
           top_p: float = 1.0, llm: Any = None) -> tuple[dict, Any]:
    """Returns (summary, the LLMEngine used). Outputs ignore EOS: each request produces exactly
    its output_tokens, as every system timed on the workload does. `capacity`: positions per
    sequence the cache is sized for (default: the manifest's). `temperature` 0 is greedy;
    above it every request samples (with `top_p`), seeded by its index. `llm`: an LLMEngine an
    earlier replay returned, idle, to time the workload again on (its caches and captured graphs
    as they are; the loop's options above then go unused)."""
    if llm is None:
        kwargs = {k: v for k, v in (("max_batch", max_batch), ("prefill_chunk", prefill_chunk),
                                    ("capacity", capacity), ("prefill_budget", prefill_budget),
                                    ("gpu_memory_fraction", gpu_memory_fraction)) if v}
        llm = engine.llm(prefix_caching=prefix_caching, **kwargs)
        llm.warmup()
    elif llm.has_work:
        raise ValueError("replay: the LLMEngine given still has requests; pass an idle one")
    before = (llm.total_queried_tokens, llm.total_cached_tokens)
    index: dict[int, int] = {}
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    outputs: dict[int, list[int]] = {}
    pending = sorted(requests, key=lambda r: r.arrival)
    start = time.perf_counter()
    while pending or llm.has_work:
        now = time.perf_counter() - start
        while pending and pending[0].arrival <= now:
            r = pending.pop(0)
            params = SamplingParams(max_new_tokens=r.output_tokens, ignore_eos=True, temperature=temperature,
                                    top_p=top_p, seed=r.index if temperature else None)
            seq = llm.add_request(r.prompt, params, detokenize=False)
            index[seq.request_id] = r.index
        if not llm.has_work:
            time.sleep(max(0.0, pending[0].arrival - now))
            continue
        outs = llm.step()
        now = time.perf_counter() - start
        for out in outs:
            i = index[out.request_id]
            first.setdefault(i, now)
            if out.finished:
                last[i], outputs[i] = now, out.seq.output_ids
    result = summarize(requests, first, last, max(last.values()), outputs)
    result["prefix_cache"] = {"queried_tokens": llm.total_queried_tokens - before[0],
                              "cached_tokens": llm.total_cached_tokens - before[1]}
    return result, llm
