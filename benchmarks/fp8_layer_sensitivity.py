"""Where FP8 W8A8 loses accuracy, layer by layer: how much of the loss comes back when one
decoder layer's linears stay in float, and when the k most sensitive ones do.

    python benchmarks/fp8_layer_sensitivity.py --model "$(optimize asset smollm2-135m)" \
        --calib c4:64x512 --eval wiki:40x512 --windows 16 --out fp8_layers.json

Through the torch fake-quant model (the engine computes the same: benchmarks/quant_quality.py
shows torch and engine perplexity within 0.1%), so one quantization serves every row:
  1. perplexity of the float model on the first --windows evaluation windows;
  2. FP8 W8A8 of every linear (E4M3, per-channel weight scales by round to nearest, static
     per-tensor activation scales by --observer), the calibration run once;
  3. each layer in turn back in float (its float weights, its activation fake-quant hooks
     off), all others FP8;
  4. the k most sensitive layers (by step 3) in float together, k = 1 .. --top.
Writes the rows as JSON to --out and prints them.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from calibration import quant_config, quantize_model
from calibration.data import parse_spec, token_windows
from optimizer.evaluate import perplexity, torch_logits_fn
from optimizer.models.loader import load_model


class LayerToggle:
    """Puts decoder layers' linears back in float and restores their FP8 form."""

    def __init__(self, model: torch.nn.Module, float_weights: dict[str, torch.Tensor], num_layers: int) -> None:
        """`float_weights`: parameter name -> the float model's value (taken before quantizing)."""
        self.linears = {i: {n: m for n, m in model.named_modules()
                            if n.startswith(f"model.layers.{i}.") and isinstance(m, torch.nn.Linear)}
                        for i in range(num_layers)}
        self.float_weights = float_weights
        self.fp8 = {n: (m.weight.data.clone(), dict(m._forward_pre_hooks))
                    for layer in self.linears.values() for n, m in layer.items()}

    def to_float(self, layers: list[int]) -> None:
        for i in layers:
            for n, m in self.linears[i].items():
                m.weight.data.copy_(self.float_weights[n + ".weight"])
                m._forward_pre_hooks.clear()  # the input's FP8 fake-quant

    def restore(self) -> None:
        for layer in self.linears.values():
            for n, m in layer.items():
                weight, hooks = self.fp8[n]
                m.weight.data.copy_(weight)
                m._forward_pre_hooks.clear()
                m._forward_pre_hooks.update(hooks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--calib", default="c4:64x512")
    p.add_argument("--eval", default="wiki:40x512")
    p.add_argument("--windows", type=int, default=16, help="the first N evaluation windows")
    p.add_argument("--observer", default="minmax")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, quiet=True)
    bos = loaded.config.bos_token_id if loaded.arch.needs_bos else None
    windows = token_windows(loaded.tokenizer, parse_spec(args.eval), bos)[:args.windows]
    num_layers = loaded.config.num_hidden_layers

    def ppl() -> float:
        return perplexity(torch_logits_fn(loaded.model), windows)["perplexity"]

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = {"model": args.model, "calib": args.calib, "eval": args.eval, "windows": int(len(windows)),
              "observer": args.observer, "weights": "round to nearest, per-channel scales"}
    report["fp32"] = ppl()
    log(f"fp32 {report['fp32']:.3f}")
    float_weights = {n: w.detach().clone() for n, w in loaded.model.named_parameters()}
    quantize_model(loaded, quant_config(method="fp8", bits=8, group_size=None, observer=args.observer,
                                       calib=args.calib), quiet=True)
    report["all_fp8"] = ppl()
    log(f"all FP8 {report['all_fp8']:.3f}")
    toggle = LayerToggle(loaded.model, float_weights, num_layers)

    report["one_layer_in_float"] = {}
    for i in range(num_layers):
        toggle.to_float([i])
        report["one_layer_in_float"][i] = ppl()
        toggle.restore()
        log(f"layer {i} in float {report['one_layer_in_float'][i]:.3f}")
    order = sorted(range(num_layers), key=lambda i: report["one_layer_in_float"][i])
    report["most_sensitive_first"] = order
    report["top_k_in_float"] = {}
    for k in range(1, args.top + 1):
        toggle.to_float(order[:k])
        report["top_k_in_float"][k] = ppl()
        toggle.restore()
        log(f"top {k} in float {report['top_k_in_float'][k]:.3f}")
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(render(report))


def render(report: dict) -> str:
    base = report["fp32"]

    def pct(x: float) -> str:
        return f"{100 * (x / base - 1):+.2f}%"

    lines = [f"fp32 {base:.3f}; all linears FP8 {report['all_fp8']:.3f} ({pct(report['all_fp8'])})", "",
             "| layers in float | ppl | vs fp32 |", "|---|---|---|"]
    order = report["most_sensitive_first"]
    for k, v in report["top_k_in_float"].items():
        lines.append(f"| {', '.join(map(str, order[:int(k)]))} | {v:.3f} | {pct(v)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
