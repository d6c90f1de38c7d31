"""Serving benchmark: our continuous-batching runtime vs transformers and onnxruntime-genai,
on one workload, in one run (CPU).

    python benchmarks/serving.py --engine ENGINE --hf-model HF_FOLDER \
        --genai-python <genai-venv>/bin/python --genai-engine <genai-int4-dir> --out bench-serving/

Workload (optimizer/workload.py): 32 requests, prompt lengths uniform in 32..256
(consecutive slices of the c4 text), output lengths uniform in 16..256 with EOS ignored,
seed 0; all arriving at t=0, then the same requests with Poisson arrivals (--rate per s).

Systems:
  ours          runtime.LLMEngine on ENGINE (static slots, iteration-level scheduling)
  transformers  model.generate on HF_FOLDER in fp32, static batches of 8 (left-padded),
                each batch decoding to its longest request
  genai         onnxruntime-genai on its int4 engine: static batches of 8 (right-padded) and
                one request at a time (benchmarks/genai_serving_peer.py, its own venv)
A static batch starts when its runtime is free, with the requests that have arrived.
Reported per system: total time, output tokens/s, TTFT and TPOT p50/p95/p99.
Every system has an untimed warm-up first. Results: OUT/results.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch

from calibration.data import load_text
from optimizer.workload import Request, dump, make_workload, run_static_batches, summarize
from runtime import Engine
from optimizer.replay import replay

GENAI_PEER = Path(__file__).with_name("genai_serving_peer.py")


def run_ours(engine: Engine, requests: list[Request], max_batch: int, prefill_chunk: int) -> dict:
    result, llm = replay(engine, requests, max_batch, prefill_chunk)
    result.update(system=f"ours: continuous batching, {llm.scheduler.max_running} slots, "
                         f"{engine.manifest['quantization'].get('bits', 'fp')}-bit engine",
                  preemptions=llm.scheduler.preemptions, slot_moves=getattr(llm.executor, "moves", 0))
    return result


def run_transformers(hf_model: str, requests: list[Request], batch: int, threads: int) -> dict:
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(hf_model, dtype=torch.float32).eval()
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else model.generation_config.eos_token_id
    pad = pad[0] if isinstance(pad, list) else pad

    class StepClock(LogitsProcessor):  # called once per generated token, just before it is chosen
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    def run_batch(group: list[Request], start: float, first, last, outputs) -> None:
        longest = max(len(r.prompt) for r in group)
        steps = max(r.output_tokens for r in group)
        ids = torch.full((len(group), longest), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, r in enumerate(group):  # left padding, as transformers' generate wants
            ids[row, longest - len(r.prompt):] = torch.tensor(r.prompt)
            mask[row, longest - len(r.prompt):] = 1
        clock = StepClock()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
                                 do_sample=False, pad_token_id=pad, logits_processor=LogitsProcessorList([clock]))
        for row, r in enumerate(group):
            first[r.index] = clock.times[0] - start
            last[r.index] = clock.times[r.output_tokens - 1] - start
            outputs[r.index] = out[row, longest:longest + r.output_tokens].tolist()

    run_batch([Request(-1 - i, r.prompt, 4, 0.0) for i, r in enumerate(requests[:batch])],
              time.perf_counter(), {}, {}, {})  # warm-up
    first, last, outputs = {}, {}, {}
    run_static_batches(requests, batch, lambda group, start: run_batch(group, start, first, last, outputs))
    result = summarize(requests, first, last, max(last.values()), outputs)
    result.update(system=f"transformers fp32 generate, static batches of {batch}")
    return result


def run_genai(python: str, engine: str, workload: Path, batch: int, threads: int) -> dict:
    proc = subprocess.run([python, str(GENAI_PEER), engine, str(workload), "--batch", str(batch),
                           "--threads", str(threads)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"genai peer failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = ["| system | total s | output tok/s | TTFT p50/p95/p99 s | TPOT p50/p95/p99 ms |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['total_s']:.1f} | {r['output_tok_s']:.1f} | "
                     f"{r['ttft_s_p50']:.2f} / {r['ttft_s_p95']:.2f} / {r['ttft_s_p99']:.2f} | "
                     f"{r['tpot_s_p50'] * 1e3:.1f} / {r['tpot_s_p95'] * 1e3:.1f} / {r['tpot_s_p99'] * 1e3:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", required=True, help="our int4 engine directory")
    ap.add_argument("--hf-model", help="HF folder of the same model, for the transformers row")
    ap.add_argument("--genai-python", help="python of a venv with onnxruntime-genai")
    ap.add_argument("--genai-engine", help="onnxruntime-genai model-builder engine of the same model")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--rate", type=float, default=2.0, help="Poisson arrivals per second (second workload)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--prefill-chunk", type=int, default=256)
    ap.add_argument("--static-batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    engine = Engine.load(args.engine, threads=args.threads)
    corpus = engine.tokenizer(load_text("c4")[:400_000]).input_ids
    results = {}
    for name, rate in (("all at t=0", None), (f"Poisson {args.rate:g}/s", args.rate)):
        requests = make_workload(corpus, args.requests, seed=args.seed, rate=rate)
        workload = args.out / f"workload-{'burst' if rate is None else 'poisson'}.json"
        dump(requests, str(workload))
        rows = [run_ours(engine, requests, args.max_batch, args.prefill_chunk)]
        if args.genai_python and args.genai_engine:
            rows.append(run_genai(args.genai_python, args.genai_engine, workload, args.static_batch, args.threads))
            rows.append(run_genai(args.genai_python, args.genai_engine, workload, 1, args.threads))
        if args.hf_model:
            rows.append(run_transformers(args.hf_model, requests, args.static_batch, args.threads))
        results[name] = rows
        print(f"\n### {name}: {len(requests)} requests, {sum(r.output_tokens for r in requests)} output tokens, "
              f"{sum(len(r.prompt) for r in requests)} prompt tokens\n")
        print(table(rows))
        for r in rows[1:]:
            print(f"ours / {r['system']}: {rows[0]['output_tok_s'] / r['output_tok_s']:.2f}x output tokens/s")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
