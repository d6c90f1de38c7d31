"""Wall time of calibrated quantization alone (no capture, no engine), optionally profiled, and
the codes it produced, for comparing two versions of the calibration code on the same model.

    python benchmarks/calibration_speed.py MODEL --method awq [--layers 2] [--calib c4:128x512] \
        [--act-order] [--asym] [--lm-head-bits 8] [--profile 30] [--codes codes.pt] [--compare other.pt]

MODEL is anything `optimize model` loads (a random checkpoint from `optimize random-checkpoint`
with a tokenizer copied in, a HF folder, a GGUF file). `--layers N` keeps only the first N
decoder layers (a quick per-layer figure on a deep model). Prints one JSON line: seconds in
quantize_model, seconds per layer, torch threads. `--codes` saves every linear's codes, scales
and zero points; `--compare` reports how far they are from another run's (identical codes,
largest difference of the dequantized weights relative to the row's scale).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def keep_layers(loaded, n: int) -> None:
    """Truncate the model to its first n decoder layers (config included)."""
    layers = loaded.model.model.layers
    loaded.model.model.layers = torch.nn.ModuleList(list(layers)[:n])
    for config in {id(c): c for c in (loaded.config, loaded.model.config)}.values():
        config.num_hidden_layers = n
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:n]


def compare(codes: dict, other: dict) -> dict:
    """How far two runs' codes are apart: the share of identical codes, and the largest
    difference of the dequantized weights, in units of the row's quantization step."""
    same = total = 0
    worst = 0.0
    for name, q in codes.items():
        o = other[name]
        same += int((q["qweight"] == o["qweight"]).sum())
        total += q["qweight"].numel()
        dq = lambda c: (c["qweight"].float().reshape(c["qweight"].shape[0], c["scales"].shape[1], -1)
                        - c["zeros"].float().unsqueeze(-1)) * c["scales"].unsqueeze(-1)
        step = q["scales"].amax(dim=1, keepdim=True).unsqueeze(-1)
        worst = max(worst, float(((dq(q) - dq(o)).abs() / step).max()))
    return {"modules": len(codes), "identical_codes": same / total, "max_diff_in_steps": worst}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--method", default="awq")
    ap.add_argument("--calib", default="c4:128x512")
    ap.add_argument("--act-order", action="store_true")
    ap.add_argument("--asym", action="store_true")
    ap.add_argument("--lm-head-bits", type=int, help="quantize the lm_head too (8: the CLI's int4 default)")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--profile", type=int, metavar="N", help="print the N most expensive calls (cProfile)")
    ap.add_argument("--codes", type=Path, help="save the codes here (torch.save)")
    ap.add_argument("--compare", type=Path, help="compare with codes saved by another run")
    args = ap.parse_args()

    from calibration import quant_config, quantize_model
    from optimizer.models.loader import load_model

    loaded = load_model(args.model, quiet=True)
    if args.layers:
        keep_layers(loaded, args.layers)
    settings = {"calib": args.calib, "symmetric": not args.asym, "lm_head_bits": args.lm_head_bits}
    if args.act_order:
        settings["act_order"] = True
    cfg = quant_config(args.method, **settings)
    profiler = cProfile.Profile() if args.profile else None
    load_before, cpu_before = os.getloadavg()[0], resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    result = quantize_model(loaded, cfg, quiet=True)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - start
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    n = loaded.config.num_hidden_layers
    record = {"model": Path(args.model).name, "method": args.method, "act_order": args.act_order,
              "calib": args.calib, "layers": n, "seconds": round(seconds, 1),
              "seconds_per_layer": round(seconds / n, 2), "threads": torch.get_num_threads(),
              # CPU seconds used (user, system) and the load average before and after: a wall time
              # well above cpu / threads means the machine was shared
              "cpu_user_s": round(cpu.ru_utime - cpu_before.ru_utime, 1),
              "cpu_sys_s": round(cpu.ru_stime - cpu_before.ru_stime, 1),
              "load": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    codes = {k: {"qweight": q.qweight, "scales": q.scales, "zeros": q.zeros} for k, q in result.codes.items()}
    if args.codes:
        torch.save(codes, args.codes)
    if args.compare:
        record["compare"] = compare(codes, torch.load(args.compare))
    print(json.dumps(record), flush=True)
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.profile)
        print(out.getvalue())


if __name__ == "__main__":
    main()
