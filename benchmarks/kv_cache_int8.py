"""The int8 KV cache against the float one, on two engines built alike except for
`--kv-cache-dtype`, in one run (CPU):

- perplexity through each engine on the same windows (`optimize eval`'s code; the kernel
  reads K/V back from the int8 cache in prefill too, so this measures the cache);
- batch-1 decode tokens/s at a short and a long context (prompt P, N new tokens, EOS
  ignored), rounds interleaved between the engines, median;
- continuous batching: R requests at once (prompts 32..256 tokens, outputs 16..256, seed 0),
  output tokens/s.

    python benchmarks/kv_cache_int8.py --float ENGINE --int8 ENGINE --out DIR [--windows 40] [--rounds 5]

Writes results.json and results.md under --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from optimizer.evaluate import engine_logits_fn, perplexity
from runtime import Engine, SamplingParams


def eval_windows(engine: Engine, spec: str) -> np.ndarray:
    """`optimize eval`'s windows for this engine (BOS first where its family wants it)."""
    from calibration.data import parse_spec, token_windows

    gen = engine.manifest["generation"]
    return token_windows(engine.tokenizer, parse_spec(spec), gen["bos_token_id"] if gen.get("needs_bos") else None)


def decode_rounds(engines: dict[str, Engine], prompt: list[int], new_tokens: int, rounds: int) -> dict[str, float]:
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    samples: dict[str, list[float]] = {name: [] for name in engines}
    for e in engines.values():
        e.generate_ids(prompt, params)  # warm-up
    for _ in range(rounds):
        for name, e in engines.items():
            samples[name].append(e.generate_ids(prompt, params).decode_tokens_per_second)
    return {name: statistics.median(s) for name, s in samples.items()}


def batch_throughput(engine: Engine, requests: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(100, 49000, int(n)).tolist() for n in rng.integers(32, 257, requests)]
    params = [SamplingParams(max_new_tokens=int(n), ignore_eos=True) for n in rng.integers(16, 257, requests)]
    start = time.perf_counter()
    results = engine.generate_batch(prompts, params, max_batch=requests)
    seconds = time.perf_counter() - start
    tokens = sum(len(r.token_ids) for r in results)
    return {"seconds": round(seconds, 2), "output_tokens": tokens, "tok_s": tokens / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--float", dest="float_engine", required=True)
    p.add_argument("--int8", dest="int8_engine", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--eval", default="wiki:40x512")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    engines = {"float": Engine.load(args.float_engine, threads=args.threads),
               "int8": Engine.load(args.int8_engine, threads=args.threads)}
    report: dict = {"engines": {n: {"path": str(e.dir.path), "kv_dtype": e.manifest["kv_cache"]["dtype"]}
                                for n, e in engines.items()}, "threads": args.threads}
    windows = eval_windows(engines["float"], args.eval)
    report["perplexity"] = {n: perplexity(engine_logits_fn(e), windows) for n, e in engines.items()}
    report["perplexity_windows"] = args.eval
    rng = np.random.default_rng(0)
    report["decode"] = {}
    for prompt_len in (128, 448):
        prompt = rng.integers(100, 49000, prompt_len).tolist()
        report["decode"][f"prompt {prompt_len}, 64 new"] = decode_rounds(engines, prompt, 64, args.rounds)
    report["batch"] = {n: batch_throughput(e, args.requests) for n, e in engines.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    (args.out / "results.md").write_text(render(report))
    print(render(report))


def render(r: dict) -> str:
    ppl = r["perplexity"]
    lines = [f"{r['threads']} threads; perplexity on {r['perplexity_windows']}", "",
             "| | float KV cache | int8 KV cache | int8 / float |", "|---|---:|---:|---:|",
             f"| perplexity | {ppl['float']['perplexity']:.4f} | {ppl['int8']['perplexity']:.4f} | "
             f"{ppl['int8']['perplexity'] / ppl['float']['perplexity']:.4f} |"]
    for name, d in r["decode"].items():
        lines.append(f"| batch-1 decode tok/s, {name} | {d['float']:.1f} | {d['int8']:.1f} | {d['int8'] / d['float']:.3f} |")
    b = r["batch"]
    lines.append(f"| continuous batching, output tok/s | {b['float']['tok_s']:.1f} | {b['int8']['tok_s']:.1f} | "
                 f"{b['int8']['tok_s'] / b['float']['tok_s']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
