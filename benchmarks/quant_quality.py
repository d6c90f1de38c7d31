"""Quantization quality benchmark, in one go: our RTN / AWQ / GPTQ / FP8 variants and llm-compressor's
AWQ / GPTQ on the same model, calibration windows and evaluation windows.

    python benchmarks/quant_quality.py --model <hf-folder | .gguf> --out bench-quant/ \\
        [--calib c4:128x512] [--eval wiki:40x512] [--llmcompressor-python /path/venv/bin/python]

Each variant runs in its own process (so peak RSS is its own): load, quantize (timed), build
the engine, then perplexity through the engine (onnxruntime) and of the torch fake-quant
model. llm-compressor runs in its own virtual environment (it needs transformers <= 5.17 and
is never a dependency of this project): it calibrates on the same windows and its fake-quant
torch model is scored on the same evaluation windows with the same NLL code.
Writes results.json and results.md under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from calibration.config import DEFAULT_KEEP

ROOT = Path(__file__).resolve().parents[1]
OURS = {
    "rtn-int4-g64-sym": dict(method="rtn", bits=4, group_size=64, symmetric=True),
    "rtn-int4-g64-asym": dict(method="rtn", bits=4, group_size=64, symmetric=False),
    "awq-int4-g64-sym": dict(method="awq", bits=4, group_size=64, symmetric=True),
    "awq-int4-g64-asym": dict(method="awq", bits=4, group_size=64, symmetric=False),
    "gptq-int4-g64-sym": dict(method="gptq", bits=4, group_size=64, symmetric=True, act_order=True),
    "gptq-int4-g64-asym": dict(method="gptq", bits=4, group_size=64, symmetric=False, act_order=True),
    "rtn-int8-perchannel-sym": dict(method="rtn", bits=8, group_size=None, symmetric=True),
    # FP8 W8A8 (E4M3), one variant per activation observer
    "fp8-minmax": dict(method="fp8", bits=8, group_size=None, observer="minmax"),
    "fp8-percentile": dict(method="fp8", bits=8, group_size=None, observer="percentile"),
    "fp8-mse": dict(method="fp8", bits=8, group_size=None, observer="mse"),
    # FP8 with GPTQ-rounded weights, then also with SmoothQuant migration (alpha 0.3)
    "fp8-minmax-gptq": dict(method="fp8", bits=8, group_size=None, observer="minmax", fp8_weights="gptq"),
    "fp8-minmax-gptq-smooth0.3": dict(method="fp8", bits=8, group_size=None, observer="minmax",
                                      fp8_weights="gptq", smooth=0.3),
}
# FP8 with GPTAQ: weights fitted to the float model's outputs (calibration.gptq.asymmetric_target)
for _observer in ("minmax", "mse"):
    OURS[f"fp8-{_observer}-gptaq"] = dict(method="fp8", bits=8, group_size=None, observer=_observer,
                                          fp8_weights="gptaq")
for _damp in (0.1, 1.0):  # a stronger ridge pulls GPTAQ's fitted weights towards the float ones
    OURS[f"fp8-minmax-gptaq-damp{_damp}"] = dict(OURS["fp8-minmax-gptaq"], damp=_damp)
for _alpha in (0.5, 0.8):  # stronger migration of activation outliers into the weights
    OURS[f"fp8-minmax-smooth{_alpha}"] = dict(OURS["fp8-minmax"], smooth=_alpha)
    OURS[f"fp8-minmax-gptq-smooth{_alpha}"] = dict(OURS["fp8-minmax-gptq"], smooth=_alpha)
# FP8 sensitivity: the fp8-minmax-gptq variant with one more kind of linear kept in float
# (besides the default lm_head and embeddings); layer indices are SmolLM2-135M's (30 layers)
_FP8_KEEP = {"qkv": ("*.q_proj", "*.k_proj", "*.v_proj"), "o": ("*.o_proj",),
             "gateup": ("*.gate_proj", "*.up_proj"), "down": ("*.down_proj",),
             "first-last-layer": ("model.layers.0.*", "model.layers.29.*")}
for _name, _patterns in _FP8_KEEP.items():
    OURS[f"fp8-minmax-gptq-keep-{_name}"] = dict(OURS["fp8-minmax-gptq"], keep=DEFAULT_KEEP + _patterns)
# FP8 with distillation after calibration (calibration/distill.py): 300 steps of 8 c4 windows
for _observer in ("minmax", "percentile", "mse"):
    OURS[f"fp8-{_observer}-distill300"] = dict(OURS[f"fp8-{_observer}"], distill_steps=300, distill_lr=1e-4)
# Batch-1 speed formats of benchmarks/pass_ablation.py, as built there (accuracy level 4, int8
# KV cache), with calibrated weights: GPTQ (act-order; the lm_head by GPTQ too) and the recipes' AWQ
FAST_BUILD = {"accuracy_level": 4, "kv_cache_dtype": "int8"}
for _sym in (True, False):
    OURS[f"gptq-int4-g128-{'sym' if _sym else 'asym'}-lm4-fast"] = dict(
        method="gptq", bits=4, group_size=128, symmetric=_sym, act_order=True, lm_head_bits=4)
    # AWQ's scaling, then GPTQ rounding (act-order), the lm_head by GPTQ too
    OURS[f"awq-gptq-int4-g128-{'sym' if _sym else 'asym'}-lm4-fast"] = dict(
        method="awq-gptq", bits=4, group_size=128, symmetric=_sym, act_order=True, lm_head_bits=4)
OURS["awq-int4-g64-asym-lm8-fast"] = dict(method="awq", bits=4, group_size=64, symmetric=False, lm_head_bits=8)
BUILD = {name: FAST_BUILD for name in OURS if name.endswith("-fast")}  # build options beyond the defaults
PEERS = {
    "llmcompressor-gptq-int4-g64-sym": dict(algo="gptq", symmetric=True),
    "llmcompressor-gptq-int4-g64-asym": dict(algo="gptq", symmetric=False),
    "llmcompressor-awq-int4-g64-asym": dict(algo="awq", symmetric=False),
    "llmcompressor-awq-int4-g64-sym": dict(algo="awq", symmetric=True),
    "llmcompressor-fp8-w8a8-static": dict(algo="fp8", symmetric=True),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(variant: str, model: str, calib: str, eval_windows: Path, out: Path, threads: int,
            distill_device: str = "cpu") -> dict:
    """Inside the variant's own process."""
    import torch

    from calibration import quant_config
    from optimizer.evaluate import engine_logits_fn, perplexity, torch_logits_fn
    from optimizer.models.loader import load_model
    from optimizer.pipeline import BuildOptions, build_engine
    from runtime import Engine

    torch.set_num_threads(threads)
    windows = np.load(eval_windows)
    loaded = load_model(model, quiet=True)
    settings = OURS.get(variant, {})
    if settings.get("distill_steps"):
        settings = {**settings, "distill_device": distill_device}
    quant = None if variant == "fp32" else quant_config(calib=calib, **settings)
    start = time.perf_counter()
    engine_dir = build_engine(BuildOptions(out=out / variant, source=model, quant=quant, overwrite=True,
                                           quiet=True, **BUILD.get(variant, {})), loaded=loaded)
    build_seconds = time.perf_counter() - start
    rss = peak_rss_mb()
    q = engine_dir.manifest["quantization"]
    engine = Engine.load(engine_dir.path, threads=threads)
    row = {
        "variant": variant,
        "ppl_engine": perplexity(engine_logits_fn(engine), windows)["perplexity"],
        "ppl_torch": perplexity(torch_logits_fn(loaded.model), windows)["perplexity"],
        "quant_seconds": q.get("seconds", 0.0),
        "build_seconds": round(build_seconds, 1),
        "peak_rss_mb": round(rss),
        "engine_mb": round(sum(f["size"] for f in engine_dir.manifest["files"].values()) / 1e6, 1),
    }
    if "distillation" in q:
        row["distillation"] = q["distillation"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--calib", default="c4:128x512")
    p.add_argument("--eval", default="wiki:40x512")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--distill-device", default="cpu", choices=("cpu", "cuda"),
                   help="where the distilled variants train (300 steps: minutes on a GPU, hours on 2 cores)")
    p.add_argument("--variants", default="fp32," + ",".join(OURS))
    p.add_argument("--llmcompressor-python", help="python of a venv with llmcompressor installed")
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--report-only", action="store_true", help="re-render --out/results.json as results.md")
    p.add_argument("--resume", action="store_true", help="keep the rows of --out/results.json that succeeded")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--eval-windows", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.report_only:
        write_report(json.loads((args.out / "results.json").read_text())["rows"], args)
        return
    if args.one:
        print(json.dumps(run_one(args.one, args.model, args.calib, args.eval_windows, args.out, args.threads,
                                 args.distill_device)))
        return

    from calibration.data import parse_spec, token_windows
    from optimizer.models.loader import load_model

    args.out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(args.model, quiet=True)
    bos = loaded.config.bos_token_id if loaded.arch.needs_bos else None
    eval_path, calib_path = args.out / "eval_windows.npy", args.out / "calib_windows.npy"
    np.save(eval_path, token_windows(loaded.tokenizer, parse_spec(args.eval), bos))
    np.save(calib_path, token_windows(loaded.tokenizer, parse_spec(args.calib), bos))
    hf_folder = args.out / "model-hf"
    if not (hf_folder / "config.json").exists():  # llm-compressor reads safetensors folders
        loaded.model.save_pretrained(hf_folder, safe_serialization=True)
        loaded.tokenizer.save_pretrained(hf_folder)
    del loaded

    rows = []
    if args.resume and (args.out / "results.json").exists():
        rows = [r for r in json.loads((args.out / "results.json").read_text())["rows"] if "error" not in r]
    done = {r["variant"] for r in rows}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for variant in [v for v in args.variants.split(",") if v and v not in done]:
        print(f"== {variant}", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--one", variant, "--model", args.model, "--out", str(args.out),
               "--calib", args.calib, "--eval-windows", str(eval_path), "--threads", str(args.threads),
               "--distill-device", args.distill_device]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            rows.append({"variant": variant, "error": proc.stderr.strip()[-600:]})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        write_report(rows, args)  # after every row: a long run can be read (or cut) midway
    if args.llmcompressor_python:
        for peer in [v for v in args.peers.split(",") if v and v not in done]:
            print(f"== {peer}", file=sys.stderr, flush=True)
            cmd = [args.llmcompressor_python, str(ROOT / "benchmarks" / "llmcompressor_peer.py"),
                   "--model", str(hf_folder), "--calib-windows", str(calib_path), "--eval-windows", str(eval_path),
                   "--algo", PEERS[peer]["algo"], "--threads", str(args.threads)]
            if not PEERS[peer]["symmetric"]:
                cmd.append("--asym")
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if proc.returncode != 0:
                rows.append({"variant": peer, "error": proc.stderr.strip()[-600:]})
            else:
                rows.append({"variant": peer, **json.loads(proc.stdout.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            write_report(rows, args)


def write_report(rows: list[dict], args: argparse.Namespace) -> None:
    base = next(r for r in rows if r["variant"] == "fp32")["ppl_engine"] if any(r["variant"] == "fp32" for r in rows) else None
    fp32_mb = next((r["engine_mb"] for r in rows if r["variant"] == "fp32"), None)
    (args.out / "results.json").write_text(json.dumps({"calib": args.calib, "eval": args.eval, "threads": args.threads,
                                                       "model": args.model, "rows": rows}, indent=2))
    lines = [f"model {args.model}; calibration {args.calib}; evaluation {args.eval}; {args.threads} threads", "",
             "| variant | ppl (engine) | ppl (torch fake-quant) | delta vs fp32 | quant wall s | peak RSS MB | engine MB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error'][:120]} | | | | | |")
            continue
        ppl = r.get("ppl_engine") or r["ppl_torch"]
        delta = f"{ppl - base:+.3f}" if base else "-"
        size = f"{r['engine_mb']} ({r['engine_mb'] / fp32_mb:.0%})" if r.get("engine_mb") and fp32_mb else "-"
        engine_ppl = f"{r['ppl_engine']:.3f}" if "ppl_engine" in r else "-"
        lines.append(f"| {r['variant']} | {engine_ppl} | {r['ppl_torch']:.3f} | {delta} | "
                     f"{r.get('quant_seconds', 0):.0f} | {r.get('peak_rss_mb', '-')} | {size} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
