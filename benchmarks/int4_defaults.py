"""Candidate `--quant int4` defaults side by side: size, wiki perplexity through the engine and
batch-1 decode speed, with onnxruntime-genai's int4 engine in the same run (CPU).

    python benchmarks/int4_defaults.py --model "$(optimize asset smollm2-135m)" --out bench-int4-defaults/ \
        --genai-python /path/to/genai-venv/bin/python --genai-engine /path/to/genai-int4/ \
        --variant "today=--group-size 64 --sym --accuracy-level 0 --lm-head-bits none" \
        --variant "default=" --variant "g128-asym-lm8-acc4=--group-size 128 --asym --accuracy-level 4 --lm-head-bits 8"

Each variant is `optimize model MODEL --quant int4 FLAGS` (built once into --out, reused when
present). Perplexity: `optimize eval` (wiki, 40 windows of 512). Speed: batch 1, a random
--prompt-tokens prompt (numpy seed 0), --new-tokens tokens with EOS ignored, --threads
threads; the variants and the peer (benchmarks/genai_peer.py) interleaved in --rounds rounds,
medians reported, with each variant's per-round ratio to the peer (median, quartiles, min-max)
and the machine's 1-minute load average before each round (on a shared machine other jobs move
every number; the load says how much was running). --no-ppl skips the perplexity runs (speed
only). Writes results.json (with the command) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pass_ablation import time_engine, time_genai  # noqa: E402

OPTIMIZE = [sys.executable, "-m", "optimizer.cli"]


def build(model: str, out: Path, flags: str) -> None:
    if (out / "manifest.json").exists():
        return
    subprocess.run(OPTIMIZE + ["model", model, "--quant", "int4", *shlex.split(flags), "--out", str(out),
                               "--overwrite", "-q"], check=True)


def perplexity(engine: Path) -> float:
    done = subprocess.run(OPTIMIZE + ["eval", str(engine), "--json"], check=True, capture_output=True, text=True)
    return json.loads(done.stdout)["perplexity"]


def size_mb(engine: Path) -> float:
    return sum(f.stat().st_size for f in engine.iterdir() if f.name.startswith("model.onnx")) / 1e6


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles and range of a list (the per-round ratios)."""
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": round(med, 3), "q1": round(q1, 3), "q3": round(q3, 3),
            "min": round(min(values), 3), "max": round(max(values), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--variant", action="append", required=True, help="NAME=FLAGS (repeatable)")
    ap.add_argument("--genai-python")
    ap.add_argument("--genai-engine")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ppl", action="store_true", help="skip the perplexity runs (speed only)")
    args = ap.parse_args()
    from runtime import Engine

    variants = dict(v.split("=", 1) for v in args.variant)
    paths = {name: args.out / name for name in variants}
    for name, flags in variants.items():
        build(args.model, paths[name], flags)
    ppl = {} if args.no_ppl else {name: perplexity(path) for name, path in paths.items()}
    engines = {name: Engine.load(path, threads=args.threads) for name, path in paths.items()}
    vocab = next(iter(engines.values())).manifest["architecture"]["config"]["vocab_size"]
    prompt = np.random.default_rng(0).integers(100, vocab, args.prompt_tokens).tolist()
    prompt_file = Path(tempfile.mkstemp(suffix=".json")[1])
    prompt_file.write_text(json.dumps(prompt))
    speed: dict[str, list[float]] = {name: [] for name in [*engines, "onnxruntime-genai int4"]}
    load: list[float] = []
    for engine in engines.values():
        time_engine(engine, prompt, args.new_tokens)  # warm-up
    for r in range(args.rounds):
        load.append(round(os.getloadavg()[0], 2))
        for name, engine in engines.items():
            speed[name].append(time_engine(engine, prompt, args.new_tokens)[1])
        if args.genai_python and args.genai_engine:
            g = time_genai(args.genai_python, args.genai_engine, prompt_file, args.new_tokens, args.threads)
            speed["onnxruntime-genai int4"].append(g["decode_tok_s"])
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    peer_rounds = speed["onnxruntime-genai int4"]
    peer = statistics.median(peer_rounds) if peer_rounds else None
    rows = []
    for name in speed:
        if not speed[name]:
            continue
        engine_dir = paths.get(name) or Path(args.genai_engine)
        rows.append({"variant": name, "flags": variants.get(name), "size_mb": round(size_mb(engine_dir), 1),
                     "wiki_ppl": ppl.get(name), "decode_tok_s": statistics.median(speed[name]),
                     "decode_rounds": [round(s, 1) for s in speed[name]],
                     "vs_genai": statistics.median(speed[name]) / peer if peer else None,
                     "per_round_vs_genai": spread([a / b for a, b in zip(speed[name], peer_rounds)])
                     if peer and name in engines else None})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"command": " ".join(map(shlex.quote, sys.argv)),
                                                       "threads": args.threads, "rounds": args.rounds,
                                                       "prompt_tokens": args.prompt_tokens,
                                                       "new_tokens": args.new_tokens, "load_average_1min": load,
                                                       "rows": rows}, indent=2))
    print(f"load average before each round: {load}")
    print("| variant | flags | size MB | wiki ppl | decode tok/s (min-max) | vs genai (medians) "
          "| per round: median (q1-q3, min-max) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        ppl_text = "-" if r["wiki_ppl"] is None else f"{r['wiki_ppl']:.3f}"
        ratio = "-" if r["vs_genai"] is None else f"{r['vs_genai']:.2f}x"
        s = r["per_round_vs_genai"]
        rounds = "-" if s is None else f"{s['median']:.2f} ({s['q1']:.2f}-{s['q3']:.2f}, {s['min']:.2f}-{s['max']:.2f})"
        print(f"| {r['variant']} | {r['flags'] or '-'} | {r['size_mb']} | {ppl_text} | {r['decode_tok_s']:.1f} "
              f"({min(r['decode_rounds'])}-{max(r['decode_rounds'])}) | {ratio} | {rounds} |")


if __name__ == "__main__":
    main()
