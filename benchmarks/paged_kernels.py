"""Where a paged engine's serving step goes at large batches: GPU kernels against host work.

    python benchmarks/paged_kernels.py ENGINE_DIR --batch 512 --steps 10 --results k.jsonl

For each batch size b: b requests of --prompt random tokens through `Engine.llm` (the pool
from --gpu-memory-fraction), stepped until all b decode and no prompt is left; then
- `step_ms`: the wall time of one `LLMEngine.step` with the decode step replayed from its
  captured graph (what serving pays per token of every sequence: host work plus GPU);
- `replay_ms`: the bucket's captured model step alone (`run_with_iobinding`, which waits for
  the GPU), so `step_ms - replay_ms` is the host's share; `decode_parts_ms`: the decode
  step's own host parts timed alone (packing, input copies, replay, reading the tokens);
- the same steps uncaptured (a second load, `cuda_graph=False`) under torch's CUDA profiler
  (CUPTI records onnxruntime's kernels): kernels and GPU-busy ms per step and the kernels that
  take the most time (`gpu_kernels.kernel_summary`).
One JSON line per b. Needs onnxruntime-gpu and torch with CUDA (benchmarks/gpu/README.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_kernels import kernel_summary  # noqa: E402


def decoding_loop(path: Path, batch: int, prompt: int, new: int, fraction: float, graphs: bool):
    """A loaded engine and its loop with `batch` sequences all decoding (prompts done)."""
    from runtime import Engine, SamplingParams

    engine = Engine.load(path, provider="cuda", cuda_graph=graphs)
    llm = engine.llm(max_batch=batch, gpu_memory_fraction=fraction)
    rng = np.random.default_rng(0)
    params = SamplingParams(max_new_tokens=new, ignore_eos=True)
    for _ in range(batch):
        llm.add_request(rng.integers(100, 1000, prompt).tolist(), params, detokenize=False)
    while True:
        llm.step()
        if llm.last_step.batch_size == batch and llm.last_step.prefill_tokens == 0:
            return engine, llm


def timed_steps(llm, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        llm.step()
    return (time.perf_counter() - t0) * 1e3 / steps


def decode_parts(executor, bucket, seqs, size: int, steps: int) -> dict:
    """Each host-side part of a captured decode step, timed alone over `steps` runs (ms each):
    packing the rows (`pack_decode`), copying ids / lengths / tables into the bucket's device
    buffers (`update_inplace`), the replay, and reading the greedy tokens back."""
    def pack():
        executor._pack(seqs)

    def update():
        bucket.ids.update_inplace(executor._ids[:, :size])
        bucket.past.update_inplace(executor._past[:size])
        bucket.table.update_inplace(executor._table[:size])

    def replay():
        executor.session.session.run_with_iobinding(bucket.binding, bucket.run_options)

    def read():
        bucket.greedy.numpy()

    out = {}
    for name, fn in (("pack", pack), ("update_inplace", update), ("replay", replay), ("read_tokens", read)):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        out[name] = (time.perf_counter() - t0) * 1e3 / steps
    return out


def measure(path: Path, batch: int, steps: int, prompt: int, fraction: float) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from runtime.graph_executor import bucket_for

    new = 16 + 6 * steps  # enough for the warm-up and every timed loop below
    engine, llm = decoding_loop(path, batch, prompt, new, fraction, graphs=True)
    executor = llm.executor
    if not hasattr(executor, "_steps"):
        raise SystemExit(f"{path}: decode steps are not captured here (see the line printed at load)")
    timed_steps(llm, 3)
    walls = [timed_steps(llm, steps) for _ in range(3)]
    size = bucket_for(batch, executor.buckets)
    bucket = executor._steps[size]
    t0 = time.perf_counter()
    for _ in range(steps):
        executor.session.session.run_with_iobinding(bucket.binding, bucket.run_options)
    replay_ms = (time.perf_counter() - t0) * 1e3 / steps
    parts = decode_parts(executor, bucket, list(llm.scheduler.running), size, steps)
    del engine, llm, executor, bucket
    gc.collect()

    engine, llm = decoding_loop(path, batch, prompt, new, fraction, graphs=False)
    eager_ms = timed_steps(llm, steps)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        timed_steps(llm, steps)
        torch.cuda.synchronize()
    kernels = kernel_summary(prof, steps)
    record = {"engine": path.name, "batch": batch, "bucket": size, "prompt": prompt,
              "step_ms": statistics.median(walls), "step_ms_spread": [min(walls), max(walls)],
              "replay_ms": replay_ms, "decode_parts_ms": parts, "eager_step_ms": eager_ms, **kernels}
    del engine, llm
    gc.collect()
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engine", type=Path)
    ap.add_argument("--batch", default="512")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gpu-memory-fraction", type=float, default=0.6)
    ap.add_argument("--results", type=Path)
    args = ap.parse_args()
    for b in (int(v) for v in args.batch.split(",")):
        record = measure(args.engine, b, args.steps, args.prompt, args.gpu_memory_fraction)
        line = json.dumps(record)
        print(line, flush=True)
        if args.results:
            with args.results.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
