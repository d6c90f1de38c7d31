"""onnxruntime-genai on the serving workload: static batches (right-padded, which its CPU
GroupQueryAttention reads correctly) or one request at a time. Runs in the genai venv:

    <genai-venv>/bin/python benchmarks/genai_serving_peer.py ENGINE_DIR workload.json \
        --batch 8 --threads 2

A batch starts when the runtime is free, with the requests that have arrived (up to
--batch; if none has, it waits for the next). It runs until its longest request is done:
every row decodes to the batch's largest output length (genai has one max_length per
generator), and each request counts only its own tokens, timed at the step that produced
its last one. Prints one JSON object (optimizer.workload.summarize) on stdout.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime_genai as og

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from optimizer.workload import load, run_static_batches, summarize  # noqa: E402


def load_model(engine_dir, threads):
    config = og.Config(engine_dir)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


def run_batch(model, pad, batch, start, first, last, outputs):
    longest = max(len(r.prompt) for r in batch)
    steps = max(r.output_tokens for r in batch)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, batch_size=len(batch), max_length=longest + steps,
                              min_length=longest + steps)
    gen = og.Generator(model, params)
    ids = np.full((len(batch), longest), pad, np.int32)
    for row, r in enumerate(batch):
        ids[row, :len(r.prompt)] = r.prompt
    gen.append_tokens(ids)
    for step in range(1, steps + 1):
        gen.generate_next_token()
        now = time.perf_counter() - start
        for r in batch:
            if step == 1:
                first[r.index] = now
            if step == r.output_tokens:
                last[r.index] = now
    for row, r in enumerate(batch):
        outputs[r.index] = [int(t) for t in gen.get_sequence(row)[longest:longest + r.output_tokens]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engine_dir")
    ap.add_argument("workload")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    requests = load(args.workload)
    model = load_model(args.engine_dir, args.threads)
    config = json.loads((Path(args.engine_dir) / "genai_config.json").read_text())
    pad = config["model"].get("pad_token_id", 0)
    warm = [type(r)(-1 - i, r.prompt, 4, 0.0) for i, r in enumerate(requests[:args.batch])]
    run_batch(model, pad, warm, time.perf_counter(), {}, {}, {})  # untimed: grows the memory arena

    first, last, outputs = {}, {}, {}
    run_static_batches(requests, args.batch,
                       lambda group, start: run_batch(model, pad, group, start, first, last, outputs))
    total = max(last.values())
    result = summarize(requests, first, last, total, outputs)
    result.update(system=f"onnxruntime-genai {og.__version__} int4, "
                         + ("one request at a time" if args.batch == 1 else f"static batches of {args.batch}"),
                  threads=args.threads)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
