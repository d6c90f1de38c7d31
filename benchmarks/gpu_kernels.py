"""Where a decode step's GPU time goes: the CUDA kernels of one step of an engine, by name.

    python benchmarks/gpu_kernels.py ENGINE_DIR [ENGINE_DIR ...] --batch 1,64 --results k.jsonl

For each engine (each in a process of its own) and batch size b: b sequences of 128 random
prompt tokens are prefilled into the static executor's slots, then decode steps of all b run
through the graph executor's bucket and device sampler, uncaptured, under torch's CUDA profiler
(CUPTI records every kernel of the process, onnxruntime's included). One JSON line per (engine,
b): kernels per step, their summed time per step (the GPU-busy time), the wall time per step
uncaptured and with the step captured as a CUDA graph (replays; and the model's graph replayed
alone), the kernels that take the most time, and the first 40 kernels of a step in order with
their median times (one layer and more). --replay-only: the captured steps' times alone.
Needs onnxruntime-gpu and torch with CUDA (benchmarks/gpu/README.md).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import env_switches  # noqa: E402  (benchmarks/: this script's folder)

PROMPT, CAPACITY = 128, 256


def short(name: str) -> str:
    """A kernel's name without template arguments and parameter lists."""
    out, depth = [], 0
    for ch in name:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return re.sub(r"^void ", "", "".join(out)).strip()[:120]


def kernel_time(e) -> float:
    return e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total


def step_sequence(kernels: list, steps: int, first: int = 0, count: int = 40) -> list[dict]:
    """Kernels `first` to `first + count` of a step, in launch order, each with its median time
    over the steps (kernels sorted by start; [] where the steps did not run the same kernels)."""
    if not kernels or len(kernels) % steps:
        return []
    ordered = sorted(kernels, key=lambda e: e.time_range.start)
    per_step = len(ordered) // steps
    runs = [ordered[s * per_step:(s + 1) * per_step] for s in range(steps)]
    names = [short(e.name) for e in runs[0]]
    if any([short(e.name) for e in run] != names for run in runs):
        return []
    return [{"kernel": names[i], "us": round(statistics.median(kernel_time(run[i]) for run in runs), 2)}
            for i in range(first, min(first + count, per_step))]


def kernel_summary(prof, steps: int, top: int = 25, sequence: tuple[int, int] | None = None) -> dict:
    """A torch profiler's CUDA kernels over `steps` steps: kernels and GPU-busy ms per step, and
    the `top` kernels by time (also onnxruntime-genai's, in benchmarks/genai_gpu_peer.py); with
    `sequence` (first, count), those kernels of a step in order (step_sequence)."""
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    by_name: dict[str, list[float]] = defaultdict(list)
    for e in kernels:
        by_name[short(e.name)].append(kernel_time(e))
    ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    summary = {"kernels_per_step": len(kernels) / steps,
               "gpu_busy_ms_per_step": sum(sum(v) for v in by_name.values()) / steps / 1e3,
               "top": [{"kernel": k, "per_step": len(v) / steps, "us_per_step": sum(v) / steps} for k, v in ranked]}
    if sequence:
        summary["sequence"] = step_sequence(kernels, steps, *sequence)
    return summary


def ready_executor(path: Path, batch: int, graphs: bool):
    from runtime import Engine, SamplingParams
    from runtime.graph_executor import GraphStaticExecutor
    from runtime.sequence import Sequence

    engine = Engine.load(path, provider="cuda", cuda_graph=graphs)
    executor = GraphStaticExecutor(engine.session, slots=batch, capacity=CAPACITY)
    rng = np.random.default_rng(0)
    seqs = []
    for i in range(batch):
        seq = Sequence(str(i), rng.integers(100, 1000, PROMPT).tolist(), SamplingParams(max_new_tokens=100), [])
        executor.pool.admit(seq.request_id, CAPACITY)
        seq.append(int(executor.prefill(seq, 0, seq.num_tokens).argmax()))
        seqs.append(seq)
    return engine, executor, seqs


def step(executor, seqs) -> None:
    for seq, token in zip(seqs, executor.decode_tokens(seqs)):
        seq.append(token)


def profiled(path: Path, batch: int, steps: int) -> dict:
    """The engine's decode steps uncaptured: their wall time, and under the profiler their kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    engine, executor, seqs = ready_executor(path, batch, graphs=False)
    for _ in range(5):
        step(executor, seqs)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(executor, seqs)
    eager_ms = (time.perf_counter() - t0) * 1e3 / steps
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step(executor, seqs)
        torch.cuda.synchronize()
    kernels = kernel_summary(prof, steps, sequence=(0, 40))
    return {"kernels_per_step": kernels["kernels_per_step"], "gpu_busy_ms_per_step": kernels["gpu_busy_ms_per_step"],
            "eager_step_ms": eager_ms, "top": kernels["top"], "sequence": kernels["sequence"]}


def replayed(path: Path, batch: int, steps: int, rounds: int = 3) -> dict:
    """The engine's decode steps as captured CUDA graphs: a whole step (the model's graph, the
    device sampler, tokens to the host) and the model's graph alone, ms a step, median and range
    over `rounds` rounds of `steps` steps."""
    engine, executor, seqs = ready_executor(path, batch, graphs=True)
    executor.capture()
    walls = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            step(executor, seqs)
        walls.append((time.perf_counter() - t0) * 1e3 / steps)
    bucket = executor._steps[executor.buckets[-1]]
    replays = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):  # the model's replay alone (run_with_iobinding waits for the GPU)
            executor.session.session.run_with_iobinding(bucket.binding, bucket.run_options)
        replays.append((time.perf_counter() - t0) * 1e3 / steps)
    return {"graph_step_ms": statistics.median(walls), "graph_step_ms_spread": [min(walls), max(walls)],
            "model_replay_ms": statistics.median(replays), "model_replay_ms_spread": [min(replays), max(replays)]}


def measure(path: Path, batch: int, steps: int, replay_only: bool = False) -> dict:
    record = {"engine": path.name, "batch": batch}
    knobs = env_switches()
    if knobs:
        record["env"] = knobs
    if not replay_only:
        record.update(profiled(path, batch, steps))
    record.update(replayed(path, batch, steps))
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engines", nargs="+", type=Path)
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--results", type=Path)
    ap.add_argument("--replay-only", action="store_true",
                    help="only the captured steps' times (no profiler: kernels launched as the engine launches "
                         "them, programmatic launches included)")
    args = ap.parse_args()
    if len(args.engines) > 1:  # each engine in a process of its own: nothing of one run carried to the next
        for path in args.engines:  # (run24-25 measured fp16 then int4 in one process)
            command = [sys.executable, __file__, str(path), "--batch", args.batch, "--steps", str(args.steps)]
            command += ["--replay-only"] if args.replay_only else []
            subprocess.run(command + (["--results", str(args.results)] if args.results else []), check=False)
        return
    import torch  # noqa: F401  (first: onnxruntime-gpu finds the CUDA libraries through it)

    for path in args.engines:
        for b in (int(x) for x in args.batch.split(",")):
            try:
                record = measure(path, b, args.steps, args.replay_only)
            except Exception as e:  # record and go on with the next
                record = {"engine": path.name, "batch": b, "error": f"{type(e).__name__}: {e}"}
            line = json.dumps(record)
            print(line[:6000], flush=True)
            if args.results:
                with args.results.open("a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
