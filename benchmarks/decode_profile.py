"""Where a batch-1 decode step's time goes: onnxruntime's own profiler, per op type, for one of
our engines and (optionally) onnxruntime-genai's engine of the same model (CPU).

    python benchmarks/decode_profile.py ENGINE --out prof/ \
        [--genai-python /path/to/genai-venv/bin/python --genai-engine /path/to/genai-int4/]

Each engine: a random --prompt-tokens prompt (numpy seed 0, as benchmarks/int4_defaults.py),
then --new-tokens greedy tokens with profiling on. Ours through runtime.Engine (its session
options, IO binding and KV layout), genai's through og.Generator with "enable_profiling" set in
memory. The decode steps' model_run spans (the first --skip steps left out) select the kernel
events inside them; the table gives, per op type, microseconds per step, nodes per step and per
node. The profiler adds a few microseconds to every node, so small ops look dearer than they are
unprofiled; compare engines with each other, and take speed from benchmarks/int4_defaults.py.
Writes OUT/summary.json and prints the tables.

The genai half runs this file under --genai-python with --genai-child (stdlib, numpy and
onnxruntime_genai only).
"""

from __future__ import annotations

import argparse
import bisect
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np


def prompt_ids(n: int, vocab: int) -> list[int]:
    return np.random.default_rng(0).integers(100, vocab, n).tolist()


def summarize(trace: Path, skip: int) -> dict:
    """Per op type: microseconds per decode step, nodes per step (model_run spans after the
    prefill and `skip` warm-up steps)."""
    events = json.loads(trace.read_text())
    runs = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"),
                  key=lambda e: e["ts"])[1 + skip:]
    starts = [r["ts"] for r in runs]
    time, nodes = Counter(), Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        i = bisect.bisect_right(starts, e["ts"]) - 1
        if i < 0 or e["ts"] > runs[i]["ts"] + runs[i]["dur"]:
            continue
        op = e["args"].get("op_name", "?")
        time[op] += e["dur"]
        nodes[op] += 1
    steps = len(runs)
    return {"steps": steps, "model_run_us": sum(r["dur"] for r in runs) / steps,
            "kernels_us": sum(time.values()) / steps,
            "ops": [{"op": op, "us_per_step": t / steps, "nodes_per_step": nodes[op] / steps,
                     "us_per_node": t / nodes[op]} for op, t in time.most_common()]}


def profile_ours(engine_dir: str, out: Path, prompt: list[int], new_tokens: int, threads: int) -> Path:
    import runtime.session as session_module
    from runtime import Engine, SamplingParams

    plain = session_module.make_session_options

    def profiled(*args, **kwargs):  # the runtime's own options, with the profiler on
        options = plain(*args, **kwargs)
        options.enable_profiling = True
        options.profile_file_prefix = str(out / "ours")
        return options

    session_module.make_session_options = profiled
    try:
        engine = Engine.load(engine_dir, threads=threads)
    finally:
        session_module.make_session_options = plain
    engine.generate_ids(prompt, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
    return Path(engine.session.session.end_profiling())


def profile_genai(engine_dir: str, out: Path, prompt: list[int], new_tokens: int, threads: int) -> Path:
    import onnxruntime_genai as og

    config = og.Config(engine_dir)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "enable_profiling": str(out / "genai")}}}}))
    model = og.Model(config)
    params = og.GeneratorParams(model)
    total = len(prompt) + new_tokens
    params.set_search_options(do_sample=False, batch_size=1, max_length=total, min_length=total)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    for _ in range(new_tokens):
        generator.generate_next_token()
    del generator, model  # the profile file is written when the session closes
    return max(out.glob("genai*.json"), key=lambda p: p.stat().st_mtime)


def print_table(name: str, s: dict) -> None:
    print(f"\n{name}: {s['steps']} decode steps, model_run {s['model_run_us']:.0f} us/step, "
          f"kernels {s['kernels_us']:.0f} us/step")
    print("| op | us/step | nodes/step | us/node |\n|---|---|---|---|")
    for row in s["ops"]:
        print(f"| {row['op']} | {row['us_per_step']:.1f} | {row['nodes_per_step']:.0f} | {row['us_per_node']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engine")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--genai-python")
    ap.add_argument("--genai-engine")
    ap.add_argument("--genai-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", type=int, default=2, help="decode steps left out at the start")
    ap.add_argument("--vocab", type=int, default=49152, help="prompt ids are drawn below this")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    prompt = prompt_ids(args.prompt_tokens, args.vocab)
    if args.genai_child:  # under the genai interpreter: profile, print the trace's path
        print(profile_genai(args.engine, args.out, prompt, args.new_tokens, args.threads))
        return
    summary = {"ours": summarize(profile_ours(args.engine, args.out, prompt, args.new_tokens, args.threads),
                                 args.skip)}
    if args.genai_python and args.genai_engine:
        done = subprocess.run([args.genai_python, __file__, args.genai_engine, "--genai-child", "--out", str(args.out),
                               "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
                               "--threads", str(args.threads), "--vocab", str(args.vocab)],
                              check=True, capture_output=True, text=True)
        summary["onnxruntime-genai"] = summarize(Path(done.stdout.strip().splitlines()[-1]), args.skip)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    for name, s in summary.items():
        print_table(name, s)


if __name__ == "__main__":
    main()
