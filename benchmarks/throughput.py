"""Offline serving throughput, in the style of `trtllm-bench` / `vllm bench throughput`.

    python benchmarks/throughput.py ours ENGINE_DIR --requests 512 --isl 128 --osl 128 \
        --arrivals t0,poisson:40 [--max-batch 256] [--provider cuda] [--results r.jsonl]
    python benchmarks/throughput.py hf llama-3.1-8b --requests 512 --isl 128 --osl 128 \
        --batches 128,256,512 [--results r.jsonl]

N requests of fixed prompt length (ISL) and output length (OSL): random prompt ids in
[100, 1000) (numpy seed 0), greedy, EOS ignored, so every system produces exactly N x OSL
tokens. `--temperature T [--top-p P]`: every request samples instead (vLLM's throughput
benchmark samples at temperature 1.0), seeded by its index in ours. Arrivals: `t0` (all at
once) or `poisson:RATE` (requests per second, seed 0).

ours  the engine through the continuous-batching loop (optimizer.replay: each request added at
      its arrival time), with --max-batch sequences at once (default: the engine's slots).
      Prints output tok/s, TTFT and TPOT p50/p99 (from each request's first and last token
      times), preemptions, and on CUDA the device memory in use (device-wide, before the
      engine loaded and after the run: torch.cuda.mem_get_info).
hf    transformers (bf16, static cache + torch.compile, on CUDA) at each static batch of
      --batches: the requests run in arrival order in groups of that size, each group a
      generate() call; a request's first-token time is its group's first decoded token (a
      streamer records it). Warm-up (compilation) at each batch size before timing. The best
      batch by output tok/s is marked.

One JSON line per run on stdout (and appended to --results). Needs CUDA only for `hf` and
for --provider cuda; a CPU engine runs the same path (the tests use a tiny one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optimizer.workload import Request, summarize  # noqa: E402


def fixed_requests(n: int, isl: int, osl: int, arrival: str = "t0", seed: int = 0) -> list[Request]:
    """n requests of isl random prompt ids and osl output tokens, arriving per `arrival`."""
    prompts = np.random.default_rng(seed).integers(100, 1000, (n, isl)).tolist()
    times = arrival_times(n, arrival, seed)
    return [Request(i, p, osl, t) for i, (p, t) in enumerate(zip(prompts, times))]


def arrival_times(n: int, arrival: str, seed: int = 0) -> list[float]:
    """`t0`: all at zero; `poisson:RATE`: exponential gaps at RATE requests per second."""
    if arrival == "t0":
        return [0.0] * n
    kind, _, rate = arrival.partition(":")
    if kind != "poisson" or not rate:
        raise ValueError(f"unknown arrival pattern {arrival!r}: use t0 or poisson:RATE")
    gaps = np.random.default_rng(seed + 1).exponential(1.0 / float(rate), n)
    return np.cumsum(gaps).tolist()


def device_used() -> int | None:
    """Bytes in use on the current CUDA device (all processes), or None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return total - free


def run_ours(engine_dir: Path, workloads: list[tuple[str, list[Request]]], max_batch: int | None, provider: str,
             prefill_budget: int | None = None, gpu_memory_fraction: float | None = None,
             temperature: float = 0.0, top_p: float = 1.0) -> list[dict]:
    """Each (arrival, requests) workload through one loaded engine, each with a fresh
    continuous-batching loop (its cache freed before the next one is made)."""
    import gc

    from optimizer.replay import replay
    from runtime import Engine

    before = device_used()
    engine = Engine.load(engine_dir, provider=provider)
    records = []
    for arrival, requests in workloads:
        summary, llm = replay(engine, requests, max_batch=max_batch, prefill_budget=prefill_budget,
                              gpu_memory_fraction=gpu_memory_fraction, temperature=temperature, top_p=top_p)
        outputs = summary.pop("outputs")
        lost = [r.index for r in requests if len(outputs.get(str(r.index), [])) != r.output_tokens]
        after = device_used()
        record = {"arrival": arrival, "system": "ours", "engine": engine_dir.name,
                  "max_batch": llm.scheduler.max_running, "prefill_budget": llm.scheduler.prefill_budget,
                  "kv_layout": engine.session.kv.layout, "kv_memory": getattr(llm.executor, "memory", None),
                  "preemptions": llm.scheduler.preemptions, "incomplete_requests": len(lost),
                  "host_sampled_rows": getattr(llm.executor, "host_sampled", None),
                  "kv_block_size": engine.session.kv.block_size,
                  "split_steps": getattr(llm.executor, "split_steps", None),
                  "decode_steps": getattr(llm.executor, "decode_steps", None), **summary}
        if before is not None and after is not None:
            record.update(gpu_used_gb_before=before / 1e9, gpu_used_gb_after=after / 1e9)
        records.append(record)
        del llm, summary
        gc.collect()  # the cache's device memory goes before the next loop takes its own
    return records


def run_hf(shape: str, requests: list[Request], batches: list[int], temperature: float = 0.0,
           top_p: float = 1.0) -> list[dict]:
    import torch
    import transformers as t

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_decode import SHAPES

    cfg = t.LlamaConfig(**SHAPES[shape], max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = t.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    isl, osl = len(requests[0].prompt), requests[0].output_tokens
    kwargs = dict(do_sample=False, max_new_tokens=osl, min_new_tokens=osl, pad_token_id=0,
                  cache_implementation="static")
    if temperature:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)

    class FirstToken:  # transformers calls put() with the prompt, then with each step's tokens
        def __init__(self) -> None:
            self.calls, self.first = 0, None

        def put(self, value) -> None:
            self.calls += 1
            if self.calls == 2:
                self.first = time.perf_counter()

        def end(self) -> None:
            pass

    records = []
    for batch in batches:
        warm = torch.tensor([r.prompt for r in requests[:batch]], device="cuda")
        if len(warm) < batch:
            continue
        for _ in range(2):  # compile at this batch size (and its one-token shape), untimed
            model.generate(warm, **kwargs)
        torch.cuda.synchronize()
        first, last = {}, {}
        start = time.perf_counter()
        queue = sorted(requests, key=lambda r: r.arrival)
        while queue:
            now = time.perf_counter() - start
            if queue[0].arrival > now:
                time.sleep(queue[0].arrival - now)
            group, queue = queue[:batch], queue[batch:]
            ids = torch.tensor([r.prompt for r in group], device="cuda")
            if len(group) < batch:  # pad the last group to the compiled shape (its rows discarded)
                ids = torch.cat([ids, ids[:1].expand(batch - len(group), isl)])
            streamer = FirstToken()
            model.generate(ids, streamer=streamer, **kwargs)
            torch.cuda.synchronize()
            done = time.perf_counter() - start
            for r in group:
                first[r.index], last[r.index] = streamer.first - start, done
        summary = summarize(requests, first, last, max(last.values()))
        records.append({"system": "hf-compile", "shape": shape, "batch": batch,
                        "gpu_used_gb_after": (device_used() or 0) / 1e9, **summary})
    best = max(records, key=lambda r: r["output_tok_s"]) if records else None
    for r in records:
        r["best_batch"] = r is best
    return records


def emit(record: dict, results: Path | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if results:
        with results.open("a") as f:
            f.write(line + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("system", choices=("ours", "hf"))
    ap.add_argument("target", help="ours: an engine directory; hf: a shape of benchmarks/gpu_decode.py")
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--isl", type=int, default=128)
    ap.add_argument("--osl", type=int, default=128)
    ap.add_argument("--arrivals", default="t0", help="comma-separated: t0, poisson:RATE")
    ap.add_argument("--max-batch", type=int, default=None, help="ours: sequences at once")
    ap.add_argument("--provider", default="cuda", help="ours: cpu or cuda")
    ap.add_argument("--prefill-budget", type=int, default=None, help="ours: prompt tokens per step "
                    "[default: the executor's]")
    ap.add_argument("--gpu-memory-fraction", type=float, default=None,
                    help="ours, paged engines: size the block pool from this share of GPU memory")
    ap.add_argument("--batches", default="128,256,512", help="hf: static batch sizes to try")
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy; above: every request samples")
    ap.add_argument("--top-p", type=float, default=1.0, help="with --temperature: nucleus sampling")
    ap.add_argument("--results", type=Path)
    args = ap.parse_args()
    if args.provider == "cuda" or args.system == "hf":
        __import__("torch")  # first: onnxruntime-gpu finds the CUDA libraries through it

    if args.temperature < 0 or not 0 < args.top_p <= 1:
        ap.error("--temperature must be >= 0 and --top-p in (0, 1]")
    workload = {"requests": args.requests, "isl": args.isl, "osl": args.osl,
                "temperature": args.temperature, "top_p": args.top_p}
    workloads = [(arrival, fixed_requests(args.requests, args.isl, args.osl, arrival))
                 for arrival in args.arrivals.split(",")]  # repeat one ("t0,t0") for the spread
    if args.system == "ours":
        for record in run_ours(Path(args.target), workloads, args.max_batch, args.provider,
                               args.prefill_budget, args.gpu_memory_fraction, args.temperature, args.top_p):
            emit({**workload, **record}, args.results)
        return
    for arrival, requests in workloads:
        for record in run_hf(args.target, requests, [int(b) for b in args.batches.split(",")],
                             args.temperature, args.top_p):
            emit({**workload, "arrival": arrival, **record}, args.results)


if __name__ == "__main__":
    main()
