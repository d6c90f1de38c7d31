"""Peak memory and wall time of `optimize model` per quantization method and model size.

    python benchmarks/build_memory.py --shapes smollm2-135m,llama-3.2-1b --methods rtn,gptq,awq \
        --work /tmp/bm --calib c4:16x512 [--stream] [--results bm.jsonl]
    python benchmarks/build_memory.py --shapes qwen2.5-0.5b --methods awq,gptq+act-order --calib default ...

A method may carry flags after "+" (gptq+act-order: --method gptq --act-order); `--calib default`
passes no --calib (the CLI's default calibration). Method `fp8` builds `--quant fp8` (W8A8 E4M3,
calibrated activation scales) instead of int4.

For each shape, a random-weight bf16 checkpoint (`optimize random-checkpoint`, reused when
present) with the SmolLM2 tokenizer copied in (calibration tokenizes text); then one
`optimize model CKPT --quant int4 --method M --out ENGINE` (or `--quant fp8`) per method, each in its own process,
timed, its peak resident memory read from the kernel (the child's ru_maxrss; calibration runs
on the CPU, so host memory is the figure). One JSON line per build: shape, method, wall
seconds, peak RSS GB, checkpoint GB, engine GB, and peak RSS minus engine size (issue 24's
target: <= 1.5 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OPTIMIZE = [sys.executable, "-m", "optimizer.cli"]


def folder_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9


def checkpoint(shape: str, work: Path) -> Path:
    out = work / f"ckpt-{shape}"
    if not (out / "config.json").exists():
        subprocess.run(OPTIMIZE + ["random-checkpoint", shape, "--out", str(out), "--overwrite"], check=True,
                       cwd=ROOT)
        from transformers import AutoTokenizer

        from optimizer.core.assets import fetch_asset

        gguf = fetch_asset("smollm2-135m", quiet=True)  # its tokenizer only, not the model
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def build(ckpt: Path, method: str, calib: str, out: Path, stream: bool = False) -> dict:
    """One build in a child process: its wall time and peak RSS (the largest child so far, so
    each build runs after a fresh fork of this small harness)."""
    name, *flags = method.split("+")
    quant = ["--quant", "fp8"] if name == "fp8" else ["--quant", "int4", "--method", name]
    cmd = OPTIMIZE + ["model", str(ckpt), *quant, "--out", str(out),
                      "--overwrite", "-q"] + ["--" + f for f in flags] + \
        (["--calib", calib] if name != "rtn" and calib != "default" else []) + (["--stream"] if stream else [])
    probe = [sys.executable, "-c", "import resource, subprocess, sys, json, time; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:]); u = resource.getrusage(resource.RUSAGE_CHILDREN); "
             "print(json.dumps({'rc': r.returncode, 'seconds': time.perf_counter() - t, "
             "'peak_rss_kb': u.ru_maxrss, 'cpu_s': u.ru_utime + u.ru_stime}))", *cmd]
    done = subprocess.run(probe, cwd=ROOT, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["rc"]:
        raise RuntimeError(f"build failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="smollm2-135m")
    ap.add_argument("--methods", default="rtn,gptq,awq")
    ap.add_argument("--calib", default="c4:16x512")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--results", type=Path)
    ap.add_argument("--stream", action="store_true", help="build with --stream (weights read from disk as needed)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for shape in args.shapes.split(","):
        ckpt = checkpoint(shape, args.work)
        for method in args.methods.split(","):
            out = args.work / f"engine-{shape}-{method}"
            r = build(ckpt, method, args.calib, out, args.stream)
            engine_gb = folder_gb(out)
            record = {"shape": shape, "method": method, "stream": args.stream,
                      "calib": None if method == "rtn" else args.calib,
                      "seconds": round(r["seconds"], 1),
                      # CPU seconds of the build and the load average after it: a wall time well
                      # above cpu_s / cores means the machine was shared
                      "cpu_s": round(r["cpu_s"], 1), "load_after": round(os.getloadavg()[0], 2),
                      "peak_rss_gb": round(r["peak_rss_kb"] * 1024 / 1e9, 2),
                      "checkpoint_gb": round(folder_gb(ckpt), 2), "engine_gb": round(engine_gb, 2),
                      "peak_over_engine_gib": round((r["peak_rss_kb"] * 1024 - engine_gb * 1e9) / 2 ** 30, 2),
                      "t": time.strftime("%H:%M:%S")}
            print(json.dumps(record), flush=True)
            if args.results:
                with args.results.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
