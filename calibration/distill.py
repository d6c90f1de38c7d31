"""FP8 distillation: after calibration, fine-tune the quantized linears' weights end to end so
that the W8A8 model's next-token distribution matches the float model's (knowledge
distillation with the FP8 rounding in the loop, as quantization-aware training does).

Calibration (the layer-by-layer driver) fixes the format: every activation scale, and which
linears are FP8. Distillation then trains one float master copy of each FP8 linear's weight,
starting from the float model's weight:

- forward: the weight is rounded to E4M3 with its per-channel scale (recomputed from the
  master at every step) and the input is rounded at its fixed calibration scale: the model
  computes what the engine will;
- backward: both roundings pass the gradient straight through (fp8.fake_quant_fp8);
- loss: KL(float model || quantized model) over every position of a batch of text windows;
- AdamW, a 10-step linear warm-up then cosine decay to 0;
- at the end each master is rounded to nearest on the E4M3 grid; that is the engine's weight.

Everything else (embeddings, norms, lm_head, linears kept in float) stays frozen. The format
is unchanged: per-channel E4M3 weights, static per-tensor E4M3 activations.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from calibration.fp8 import Fp8Linear, fake_quant_fp8, quantize_fp8, weight_scales
from optimizer.core.errors import InputError
from optimizer.core.progress import bar

WARMUP_STEPS = 10


class Fp8WeightRounding(torch.nn.Module):
    """Parametrization: the weight as the engine stores it (per-channel E4M3), from a float master."""

    def forward(self, master: torch.Tensor) -> torch.Tensor:
        return fake_quant_fp8(master, weight_scales(master).unsqueeze(1))


def distillation_device(name: str) -> torch.device:
    """`name` is cpu or cuda (Fp8Config.validate checks it); cuda must be there."""
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--distill-device cuda, but torch sees no CUDA GPU here",
                         hint="use --distill-device cpu (slow: each step runs both models on the batch), "
                              "or install a CUDA build of torch on a machine with a GPU")
    return torch.device(name)


def lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over WARMUP_STEPS, then cosine decay to 0 at `steps`."""
    return lr * min(1.0, (step + 1) / WARMUP_STEPS) * 0.5 * (1.0 + math.cos(math.pi * step / steps))


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher || student), from (B, L, V) logits."""
    s = F.log_softmax(student_logits.float(), dim=-1).flatten(0, 1)
    t = F.log_softmax(teacher_logits.float(), dim=-1).flatten(0, 1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def distill_fp8(model: torch.nn.Module, teacher: torch.nn.Module, codes: dict[str, Fp8Linear],
                windows: np.ndarray, steps: int, lr: float, batch: int, device: str,
                seed: int = 0, quiet: bool = False) -> dict[str, Any]:
    """Fine-tune every linear in `codes` (installed by fp8_layer: input fake-quant hooks in place)
    against `teacher` (the float model) on `windows` (N, L); rewrite their weights and codes.
    Returns the record for the manifest."""
    dev = distillation_device(device)
    home = next(model.parameters()).device  # where both models go back to
    start = time.perf_counter()
    frozen = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    linears = {name: model.get_submodule(name) for name in codes}
    masters = []
    for name, lin in linears.items():  # the master starts at the float model's weight
        lin.weight.data.copy_(teacher.get_submodule(name).weight.data)
        parametrize.register_parametrization(lin, "weight", Fp8WeightRounding())
        master = lin.parametrizations.weight.original
        master.requires_grad_(True)
        masters.append(master)
    model.to(dev)
    teacher.to(dev).eval()
    optimizer = torch.optim.AdamW(masters, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(windows)
    losses: list[float] = []
    try:
        with bar("distilling", steps, quiet) as advance:
            for step in range(steps):
                ids = data[torch.randperm(len(data), generator=generator)[:batch]].to(dev)
                with torch.no_grad():
                    target = teacher(input_ids=ids, use_cache=False).logits
                loss = kl_to_teacher(model(input_ids=ids, use_cache=False).logits, target)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, steps, lr)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                advance()
    finally:
        model.to(home)
        teacher.to(home)
        for name, lin in linears.items():  # back to a plain weight: the master, rounded below
            parametrize.remove_parametrizations(lin, "weight", leave_parametrized=False)
        for p, flag in frozen.items():
            p.requires_grad_(flag)
    with torch.no_grad():
        for name, lin in linears.items():
            old = codes[name]
            scales = weight_scales(lin.weight)
            new = Fp8Linear(quantize_fp8(lin.weight, scales.unsqueeze(1)), scales, old.input_scale, old.observer)
            lin.weight.data.copy_(new.dequantize().to(lin.weight.dtype))
            codes[name] = new
    head = min(10, len(losses))
    return {"steps": steps, "lr": lr, "batch": batch, "device": str(dev), "seed": seed,
            "kl_first_steps": round(sum(losses[:head]) / max(head, 1), 6),
            "kl_last_steps": round(sum(losses[-head:]) / max(head, 1), 6),
            "seconds": round(time.perf_counter() - start, 2)}
