"""Speed of one engine through the runtime, run in its own process so its peak memory is the
engine's own:

    python -m optimizer.report.speed ENGINE --threads 2 --prompt-tokens 128 --decode-tokens 64 \\
        --requests 32 --max-batch 32 --json

- prefill tokens/s: a prompt of P tokens of real text, batch 1 (median of --runs, after a warm-up);
- decode tokens/s: batch 1, the N tokens after it, EOS ignored (same runs);
- serving: the serving workload (optimizer.workload: uniform prompt and output lengths, all
  arriving at t=0, fixed seed) replayed through the continuous-batching engine;
- peak RSS of the process (the engine, its arena and caches).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
from typing import Any

SERVING_DEFAULTS = {"requests": 32, "prompt_tokens": [32, 256], "output_tokens": [16, 256], "seed": 0}


def corpus_ids(tokenizer: Any) -> list[int]:
    from calibration.data import load_text

    return tokenizer(load_text("c4")[:400_000]).input_ids


def measure(engine_dir: str, threads: int | None, provider: str, prompt_tokens: int, decode_tokens: int,
            runs: int, serving: dict[str, Any] | None, max_batch: int | None) -> dict[str, Any]:
    from optimizer.workload import make_workload
    from runtime import Engine, SamplingParams
    from optimizer.replay import replay

    engine = Engine.load(engine_dir, provider=provider, threads=threads)
    ids = corpus_ids(engine.tokenizer)
    prompt = ids[:prompt_tokens]
    params = SamplingParams(max_new_tokens=decode_tokens, ignore_eos=True)
    engine.generate_ids(prompt, params)  # warm-up
    results = [engine.generate_ids(prompt, params) for _ in range(runs)]
    out: dict[str, Any] = {
        "prefill_tok_s": prompt_tokens / statistics.median(r.prefill_seconds for r in results),
        "decode_tok_s": statistics.median(r.decode_tokens_per_second for r in results),
        "serving": None,
    }
    if serving:
        requests = make_workload(ids, serving["requests"], tuple(serving["prompt_tokens"]),
                                 tuple(serving["output_tokens"]), serving["seed"])
        summary, _ = replay(engine, requests, max_batch, prefill_chunk=256)  # as `optimize serve`
        out["serving"] = {
            "output_tok_s": summary["output_tok_s"], "total_s": summary["total_s"],
            "ttft_s": {f"p{q}": summary[f"ttft_s_p{q}"] for q in (50, 95, 99)},
            "tpot_ms": {f"p{q}": summary[f"tpot_s_p{q}"] * 1e3 for q in (50, 95, 99)},
        }
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--provider", default="cpu")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--requests", type=int, default=SERVING_DEFAULTS["requests"], help="0: no serving run")
    p.add_argument("--prompt-range", default="32,256")
    p.add_argument("--output-range", default="16,256")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-batch", type=int, default=None)
    args = p.parse_args(argv)
    serving = None
    if args.requests:
        serving = {"requests": args.requests, "prompt_tokens": [int(x) for x in args.prompt_range.split(",")],
                   "output_tokens": [int(x) for x in args.output_range.split(",")], "seed": args.seed}
    result = measure(args.engine, args.threads, args.provider, args.prompt_tokens, args.decode_tokens,
                     args.runs, serving, args.max_batch)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
