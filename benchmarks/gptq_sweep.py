"""GPTQ's rounding of one decoder layer's linears at a real shape: sub-blocks replayed from
captured CUDA graphs against the same sweep launched op by op (calibration.gptq_sweep).

    python benchmarks/gptq_sweep.py --shape llama-3.1-8b --device cuda --results gptq.jsonl

For each input group of a Llama layer (q/k/v stacked, o, gate/up stacked, down), a random
weight and a Hessian from random correlated inputs, then `gptq_quantize` (group 64 symmetric,
the default int4 settings otherwise) with graphs and without (OPTIMIZER_GPTQ_CUDA_GRAPHS=0),
alternating, `--repeats` times each. One JSON line per (group, way): median seconds, spread,
and whether both ways gave the same codes. On the CPU, gptq_quantize's own sweep (one way).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _results import report_line  # noqa: E402  (benchmarks/, this script's folder)

SHAPES = {  # hidden, kv width, intermediate
    "llama-3.1-8b": (4096, 1024, 14336),
    "llama-3.2-1b": (2048, 512, 8192),
}


def groups(shape: str) -> dict[str, tuple[int, int]]:
    """(out, in) of each group of linears that share an input, stacked as GPTQ rounds them."""
    hidden, kv, inter = SHAPES[shape]
    return {"qkv": (hidden + 2 * kv, hidden), "o": (hidden, hidden), "gate_up": (2 * inter, hidden),
            "down": (hidden, inter)}


def timed(fn, device: str) -> tuple[float, object]:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    import torch

    from calibration.gptq import gptq_quantize
    from calibration.rtn import QuantSpec

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--act-order", action="store_true")
    ap.add_argument("--results", type=Path)
    args = ap.parse_args()
    ways = ["graphs", "eager"] if args.device == "cuda" else ["eager"]
    spec = QuantSpec(4, 64, True)
    torch.manual_seed(0)
    for name, (out, n_in) in groups(args.shape).items():
        dev = args.device
        x = torch.randn(2048, n_in, device=dev) @ (torch.randn(n_in, n_in, device=dev) / n_in ** 0.5)
        H = 2 * x.T @ x / len(x)
        W = torch.randn(out, n_in, device=dev) * 0.02
        del x
        seconds: dict[str, list[float]] = {w: [] for w in ways}
        codes = {}
        for _ in range(args.repeats):
            for way in ways:
                os.environ["OPTIMIZER_GPTQ_CUDA_GRAPHS"] = "1" if way == "graphs" else "0"
                s, q = timed(lambda: gptq_quantize(W, H, spec, act_order=args.act_order), args.device)
                seconds[way].append(s)
                codes[way] = q.qweight
        same = all(torch.equal(codes[w], codes[ways[0]]) for w in ways)
        for way in ways:
            line = {"shape": args.shape, "group": name, "out": out, "in": n_in, "device": args.device, "way": way,
                    "act_order": args.act_order, "seconds": statistics.median(seconds[way]),
                    "spread": [min(seconds[way]), max(seconds[way])], "same_codes": same}
            report_line(line, args.results)


if __name__ == "__main__":
    main()
