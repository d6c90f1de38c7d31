"""Paged vs static KV-cache layouts on CUDA: the serving workload through both, in one run.

    python benchmarks/paged_gpu.py --model HF_FOLDER --work DIR [--quant int4]

Builds (or reuses, under DIR) one fp16 engine of the model per layout: static, SLOTS slots of
CAPACITY positions; paged, blocks of 16 tokens holding the same number of positions. Replays
benchmarks/serving.py's workload (optimizer/workload.py: 32 requests, prompts 32..256 from
the c4 text, outputs 16..256 with EOS ignored, seed 0, all at t=0) through each on
onnxruntime's CUDA provider, after an untimed warm-up, and then once more through the paged
engine with a pool of a quarter of those positions, where the scheduler has to preempt.
Reports output tokens/s, TTFT and TPOT p50/p95/p99, preemptions, and for each run how many
requests got exactly the static engine's greedy tokens. Results: DIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration import quant_config  # noqa: E402
from calibration.data import load_text  # noqa: E402
from optimizer.pipeline import BuildOptions, build_engine  # noqa: E402
from optimizer.workload import make_workload  # noqa: E402
from runtime import Engine  # noqa: E402
from optimizer.replay import replay  # noqa: E402

SLOTS, CAPACITY = 32, 512


def build(model: str, out: Path, layout: str, quant: str | None) -> Engine:
    if not (out / "manifest.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        build_engine(BuildOptions(out=out, source=model, dtype="fp16", kv_layout=layout, kv_slots=SLOTS,
                                  kv_capacity=CAPACITY, quant=quant_config(method="rtn") if quant else None,
                                  quiet=True))
    return Engine.load(out, provider="cuda")


def run(name: str, engine: Engine, requests, reference: dict | None, **llm_kwargs) -> tuple[dict, dict]:
    result, llm = replay(engine, requests, **llm_kwargs)
    outputs = {int(k): v for k, v in result.pop("outputs", {}).items()}
    row = {"system": name, **result, "preemptions": llm.scheduler.preemptions,
           "pool": f"{llm.executor.pool.total} {'blocks' if hasattr(llm.executor.pool, 'block_size') else 'slots'}"}
    if reference is not None:
        row["same_tokens_as_static"] = sum(outputs.get(i) == reference.get(i) for i in reference)
        row["first_difference_at"] = {i: _first_difference(outputs[i], reference[i]) for i in reference
                                      if outputs.get(i) != reference.get(i)}
    return row, outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="HF folder")
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--quant", choices=["int4"], default=None, help="RTN int4 weights (default: fp16)")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tag = args.quant or "fp16"
    static = build(args.model, args.work / f"static-{tag}", "static", args.quant)
    paged = build(args.model, args.work / f"paged-{tag}", "paged", args.quant)
    corpus = static.tokenizer(load_text("c4")[:400_000]).input_ids
    requests = make_workload(corpus, args.requests, seed=args.seed)

    rows = []
    row, reference = run(f"static: {SLOTS} slots x {CAPACITY}", static, requests, None)
    rows.append(row)
    row, _ = run(f"paged: {SLOTS * CAPACITY // 16} blocks x 16", paged, requests, reference)
    rows.append(row)
    row, _ = run(f"paged, quarter pool: {SLOTS * CAPACITY // 64} blocks x 16", paged, requests, reference,
                 capacity=CAPACITY // 4, max_batch=SLOTS)
    rows.append(row)
    for r in rows:
        print(json.dumps({k: r[k] for k in ("system", "total_s", "output_tok_s", "ttft_s_p50", "ttft_s_p95",
                                            "tpot_s_p50", "tpot_s_p95", "preemptions", "pool",
                                            "same_tokens_as_static", "first_difference_at") if k in r}))
    (args.work / "results.json").write_text(json.dumps({"model": args.model, "weights": tag,
                                                         "device": _device(), "rows": rows}, indent=1))


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _device() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - the device name is a label only
        return "unknown"


if __name__ == "__main__":
    main()
