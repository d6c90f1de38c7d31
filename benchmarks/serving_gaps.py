"""Where the serving loop's decode time goes on the GPU: busy, and idle between its work.

    python benchmarks/serving_gaps.py ENGINE_DIR [--concurrent 64] [--results r.jsonl]

Runs benchmarks/gpu_decode.py's workload (N concurrent requests of 128 random prompt tokens and
128 new ones, all at t=0, greedy) through the continuous-batching loop once to warm it up, then
again under torch's profiler (CUPTI records every kernel and copy of the process, onnxruntime's
included), each `LLMEngine.step()` marked. For the steps that only decode (a round of decode steps
where runtime.multi_step queues several): each step's wall time, the GPU's busy time inside it
(the union of its kernels and copies), and its idle time split into the lead (from the step's
start to its first GPU work: host planning and launches), the gaps between GPU work, and the tail
(after the last GPU work: reading tokens back, bookkeeping); the gaps summed by the pair of
activities around them. One JSON line: what the loop leaves on the table between model replays.
Needs onnxruntime-gpu and torch with CUDA (benchmarks/gpu/README.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import report_line  # noqa: E402
from gpu_decode import CAPACITY, NEW, prompts  # noqa: E402  (its workload)
from gpu_kernels import short  # noqa: E402  (kernel names without templates)


def step_gaps(step: tuple[float, float], work: list[tuple[float, float, str]]) -> dict:
    """One step's GPU time (microseconds): `step` = (start, end) of the host's step() call, `work`
    = (start, end, name) of every GPU activity, sorted by start. Busy is the union of the
    activities inside the step; idle the rest: `lead` before the first, `gaps` between (with
    `pairs`: each gap's (before, after) names and length), `tail` after the last."""
    start, end = step
    inside = [(max(a, start), min(b, end), n) for a, b, n in work if b > start and a < end]
    if not inside:
        return {"wall": end - start, "busy": 0.0, "lead": end - start, "gaps": 0.0, "tail": 0.0, "pairs": []}
    busy, gaps, pairs = 0.0, 0.0, []
    covered_to, last_name = inside[0][0], inside[0][2]
    for a, b, name in inside:
        if a > covered_to:
            gaps += a - covered_to
            pairs.append((last_name, name, a - covered_to))
        if b > covered_to:
            busy += b - max(a, covered_to)
            covered_to, last_name = b, name
    return {"wall": end - start, "busy": busy, "lead": inside[0][0] - start, "gaps": gaps,
            "tail": end - covered_to, "pairs": pairs}


def summarize(steps: list[dict], top: int = 8) -> dict:
    """Medians (ms) over the steps of step_gaps' figures, and the `top` gap pairs by total time
    (ms a step)."""
    def median_ms(key: str) -> float:
        return statistics.median(s[key] for s in steps) / 1e3

    by_pair: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in steps:
        for before, after, length in s["pairs"]:
            by_pair[(before, after)].append(length)
    ranked = sorted(by_pair.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {"steps": len(steps), **{f"{k}_ms": median_ms(k) for k in ("wall", "busy", "lead", "gaps", "tail")},
            "gap_pairs": [{"before": b, "after": a, "count_per_step": len(v) / len(steps),
                           "ms_per_step": sum(v) / len(steps) / 1e3} for (b, a), v in ranked]}


def profile_decode(path: Path, concurrent: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from optimizer.replay import replay
    from optimizer.workload import Request
    from runtime import Engine

    engine = Engine.load(path, provider="cuda", cuda_graph=True)
    requests = [Request(i, p, NEW, 0.0) for i, p in enumerate(prompts(concurrent))]
    first, llm = replay(engine, requests, max_batch=concurrent, capacity=CAPACITY)  # warm-up run
    marks: list[int] = []  # indices of the decode-only steps among the marked ones
    calls = [0]
    step = llm.step

    def marked_step():
        with record_function("llm.step"):
            outputs = step()
        if llm.last_step.prefill_tokens == 0 and llm.last_step.decode_tokens:
            marks.append(calls[0])
        calls[0] += 1
        return outputs

    llm.step = marked_step
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        summary, _ = replay(engine, requests, llm=llm)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    llm.step = step
    events = prof.events()
    work = sorted((e.time_range.start, e.time_range.end, short(e.name)) for e in events
                  if e.device_type.name == "CUDA")
    host = sorted((e.time_range.start, e.time_range.end) for e in events
                  if e.device_type.name == "CPU" and e.name == "llm.step")
    decode = [step_gaps(host[i], work) for i in marks if i < len(host)]
    return {"engine": path.name, "concurrent": concurrent, "output_tok_s": summary["output_tok_s"],
            "tpot_s_p50": summary["tpot_s_p50"], "ttft_s_p50": summary["ttft_s_p50"],
            "warmup_output_tok_s": first["output_tok_s"], "decode_steps_per_call": llm.max_decode_steps,
            **summarize(decode)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engine", type=Path)
    ap.add_argument("--concurrent", type=int, default=64)
    ap.add_argument("--results", type=Path)
    args = ap.parse_args()
    import torch  # noqa: F401  (first: onnxruntime-gpu finds the CUDA libraries through it)

    report_line(profile_decode(args.engine, args.concurrent), args.results)


if __name__ == "__main__":
    main()
