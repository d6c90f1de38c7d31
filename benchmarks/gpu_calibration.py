"""Calibration on the GPU at a real shape: wall time, peak host memory and peak GPU memory.

    python benchmarks/gpu_calibration.py --shape llama-3.1-8b --methods gptq,awq --build awq \
        --work /tmp/gc --results /tmp/gc/calibration.jsonl

For each method, a fresh random-weight model of the shape (fp32, the SmolLM2 tokenizer: the
calibration text is tokenized), then `quantize_model` with the default calibration (c4
128x512) on `--calib-device cuda`, or, for the methods in --build, the whole `optimize model`
build (quantize, capture, passes, write, verify on the CPU provider). One JSON line each:
load and quantize seconds (and the build's), peak host RSS of the phase (VmHWM, reset before
it) and peak GPU memory (torch's allocator).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def main() -> None:
    import torch

    from calibration import quant_config, quantize_model
    from optimizer.core.assets import fetch_asset
    from optimizer.models.loader import load_model
    from optimizer.pipeline import BuildOptions, build_engine

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="llama-3.1-8b")
    ap.add_argument("--methods", default="gptq,awq")
    ap.add_argument("--build", default="awq", help="methods timed as a whole build (the others: quantize only)")
    ap.add_argument("--calib", default="c4:128x512")
    ap.add_argument("--device", default="cuda", help="--calib-device (cpu: a smoke run of this script)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--results", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = fetch_asset("smollm2-135m", quiet=True)
    for method in args.methods.split(","):
        reset_peak_rss()
        t0 = time.perf_counter()
        loaded = load_model(None, random_weights=True, config=args.shape, tokenizer=tokenizer, quiet=True)
        record = {"shape": args.shape, "method": method, "calib": args.calib, "device": args.device,
                  "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None, "load_s": round(time.perf_counter() - t0, 1),
                  "load_peak_rss_gb": round(peak_rss_gb(), 2)}
        cfg = quant_config(method, bits=4, group_size=64, calib=args.calib, calib_device=args.device)
        reset_peak_rss()
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        if method in args.build.split(","):
            out = args.work / f"engine-{method}"
            engine = build_engine(BuildOptions(out=out, random_weights=True, config=args.shape, quant=cfg,
                                               overwrite=True), loaded)
            record.update(build_s=round(time.perf_counter() - t0, 1),
                          quantize_s=engine.manifest["quantization"]["seconds"],
                          engine_gb=round(sum(f.stat().st_size for f in out.iterdir()) / 1e9, 2),
                          verification=engine.manifest["verification"])
            shutil.rmtree(out, ignore_errors=True)
        else:
            result = quantize_model(loaded, cfg)
            record.update(quantize_s=round(time.perf_counter() - t0, 1), modules=len(result.codes))
        record.update(peak_rss_gb=round(peak_rss_gb(), 2),
                      peak_gpu_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2) if args.device == "cuda" else None,
                      t=time.strftime("%H:%M:%S"))
        print(json.dumps(record), flush=True)
        if args.results:
            with args.results.open("a") as f:
                f.write(json.dumps(record) + "\n")
        del loaded


if __name__ == "__main__":
    main()
