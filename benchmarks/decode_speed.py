"""Batch-1 speed of an engine through our runtime, side by side with transformers (fp32) on
the same model, in one run: prefill time for a P-token prompt and decode tokens/s over N
generated tokens (EOS ignored), median of R runs after one warm-up.

    python benchmarks/decode_speed.py engine/ --prompt-tokens 128 --new-tokens 64 --runs 5 --threads 2

The transformers peer loads the model the engine was built from (the manifest's source path).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from runtime import Engine, SamplingParams


def bench_engine(engine: Engine, prompt: list[int], new_tokens: int, runs: int) -> dict:
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    engine.generate_ids(prompt, params)  # warm-up
    results = [engine.generate_ids(prompt, params) for _ in range(runs)]
    return {"prefill_ms": statistics.median(r.prefill_seconds for r in results) * 1e3,
            "decode_tok_s": statistics.median(r.decode_tokens_per_second for r in results)}


def bench_transformers(model, prompt: list[int], new_tokens: int, runs: int) -> dict:
    ids = torch.tensor([prompt])

    def one() -> tuple[float, float]:
        with torch.no_grad():
            start = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            prefill = time.perf_counter() - start
            token = out.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            for _ in range(new_tokens - 1):
                out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
                token = out.logits[:, -1:].argmax(-1)
            return prefill, (new_tokens - 1) / (time.perf_counter() - start)

    one()
    samples = [one() for _ in range(runs)]
    return {"prefill_ms": statistics.median(s[0] for s in samples) * 1e3,
            "decode_tok_s": statistics.median(s[1] for s in samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--provider", default="cpu", help="onnxruntime execution provider for the engine")
    parser.add_argument("--no-peer", action="store_true", help="skip the transformers peer")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    engine = Engine.load(args.engine, provider=args.provider, threads=args.threads)
    vocab = engine.manifest["architecture"]["config"]["vocab_size"]
    prompt = np.random.default_rng(0).integers(0, vocab, args.prompt_tokens).tolist()
    rows = {"optimizer engine (" + engine.manifest["dtype"] + ")":
            bench_engine(engine, prompt, args.new_tokens, args.runs)}
    source = engine.manifest["source"]
    if not args.no_peer and source["kind"] in ("gguf", "huggingface"):
        from optimizer.models.loader import load_model

        loaded = load_model(source["path"], quiet=True)
        rows["transformers (fp32, eager loop)"] = bench_transformers(loaded.model, prompt, args.new_tokens, args.runs)
    if args.json:
        print(json.dumps({"threads": args.threads, "prompt_tokens": args.prompt_tokens,
                          "new_tokens": args.new_tokens, "rows": rows}, indent=2))
        return
    print(f"batch 1, {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, "
          f"{args.threads} threads, median of {args.runs}")
    print(f"{'':34} {'prefill ms':>11} {'decode tok/s':>13}")
    for name, r in rows.items():
        print(f"{name:34} {r['prefill_ms']:11.1f} {r['decode_tok_s']:13.1f}")


if __name__ == "__main__":
    main()
