"""Time an onnxruntime-genai engine (e.g. its model builder's int4 CPU build) as a speed peer.

Runs under a separate interpreter that has onnxruntime-genai installed (stdlib, numpy and
onnxruntime_genai only), for example:

    /work/cache/genai-venv/bin/python benchmarks/genai_peer.py ENGINE_DIR \
        --prompt-ids prompt.json --new-tokens 64 --runs 3 --threads 2

ENGINE_DIR is the builder's output folder (genai_config.json, model.onnx, ...); it is not
modified: the thread count is applied through og.Config.overlay, in memory.
FILE.json holds a JSON list of token ids, the prompt (batch 1).

Per run, greedy (do_sample=False), EOS ignored (min_length = max_length = prompt + new tokens):
  prefill_ms    append_tokens(prompt) until the first generated token is chosen. append_tokens
                runs the model over the prompt, so its logits are ready when it returns; the
                first generate_next_token() only picks the argmax from them.
  decode_tok_s  the remaining new_tokens - 1 tokens, each one a single-token model step,
                divided by their wall time.
One untimed warm-up run comes first. Prints one JSON object on stdout.

--huge-pages gives the peer's weights the 2 MiB pages our runtime asks for on CPU
(runtime/hugepages.py, loaded by path: it needs only the standard library), so a comparison
can show the runtimes with and without that difference.
"""
import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import onnxruntime_genai as og

HUGEPAGES = Path(__file__).resolve().parents[1] / "runtime" / "hugepages.py"


def hugepages_module():
    spec = importlib.util.spec_from_file_location("hugepages", HUGEPAGES)
    module = importlib.util.module_from_spec(spec)
    sys.modules["hugepages"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load_model(engine_dir, threads):
    config = og.Config(engine_dir)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads}}}}))
    return og.Model(config)


def one_run(model, prompt, new_tokens):
    total = len(prompt) + new_tokens
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, batch_size=1, max_length=total, min_length=total)
    gen = og.Generator(model, params)

    t0 = time.perf_counter()
    gen.append_tokens(prompt)
    gen.generate_next_token()
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        gen.generate_next_token()
    t2 = time.perf_counter()

    ids = [int(t) for t in gen.get_sequence(0)[len(prompt):]]
    assert len(ids) == new_tokens, (len(ids), new_tokens)
    return {"prefill_ms": (t1 - t0) * 1e3,
            "decode_tok_s": (new_tokens - 1) / (t2 - t1) if new_tokens > 1 else None,
            "generated_ids": ids}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engine_dir")
    ap.add_argument("--prompt-ids", required=True, help="JSON file with a list of token ids")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--huge-pages", action="store_true", help="back the weights with 2 MiB pages")
    args = ap.parse_args()

    with open(args.prompt_ids) as f:
        prompt = [int(t) for t in json.load(f)]
    model = load_model(args.engine_dir, args.threads)
    promotion = hugepages_module().promote().collapsed_bytes if args.huge_pages else None

    one_run(model, prompt, args.new_tokens)  # warm-up
    runs = [one_run(model, prompt, args.new_tokens) for _ in range(args.runs)]

    print(json.dumps({
        "prefill_ms": statistics.median(r["prefill_ms"] for r in runs),
        "decode_tok_s": statistics.median(r["decode_tok_s"] for r in runs)
        if args.new_tokens > 1 else None,
        "runs": [{k: r[k] for k in ("prefill_ms", "decode_tok_s")} for r in runs],
        "threads": args.threads,
        "prompt_tokens": len(prompt),
        "new_tokens": args.new_tokens,
        "onnxruntime_genai": og.__version__,
        "huge_page_bytes": promotion,
        "generated_ids": runs[0]["generated_ids"],
    }))


if __name__ == "__main__":
    main()
