"""FP8 W8A8's per-layer steps: activation scales observed on the calibration text, weights
rounded per channel (to nearest, by GPTQ, or GPTAQ-fitted), optionally after SmoothQuant's
migration. The math is in calibration/fp8.py."""

from __future__ import annotations

import copy
from typing import Any

import torch

from calibration.config import Fp8Config
from calibration.fp8 import Fp8Linear, fake_quant_fp8, make_observer, quantize_linear_fp8, smoothing_scales
from calibration.gptq import HessianAccumulator, PairAccumulator, asymmetric_target, gptq_fp8
from calibration.mappings import INPUT_GROUPS, awq_mappings
from calibration.methods.awq import scale_prev_down
from calibration.methods.hooks import input_of, observe_shared_inputs
from calibration.sequential import LayerWork


def fp8_layer(work: LayerWork, cfg: Fp8Config, codes: dict, arch: Any = None) -> None:
    """Observe each linear's input over the calibration set (linears reading the same tensor
    share one observer, so they share one activation scale and one Q/DQ pair in the engine),
    quantize the weights per channel, and from here on fake-quantize the inputs: later layers
    are calibrated on what the engine will compute, and verification compares like with like.
    With cfg.smooth, activation outliers are first migrated into the weights (smooth_layer);
    with cfg.fp8_weights "gptq" the weights are rounded by GPTQ on the E4M3 grid, with
    "gptaq" as fp8_gptaq_layer does."""
    if cfg.smooth is not None:
        smooth_layer(work, cfg.smooth, arch)
    if cfg.fp8_weights == "gptaq":
        fp8_gptaq_layer(work, cfg, codes)
        return
    gptq = cfg.fp8_weights == "gptq"

    def new_stats(role: str) -> tuple[Any, HessianAccumulator | None]:  # one pass feeds both
        return (make_observer(cfg.observer, cfg.percentile),
                HessianAccumulator(work.linears[role].in_features) if gptq else None)

    def update(stats: tuple[Any, HessianAccumulator | None], x: torch.Tensor) -> None:
        stats[0].update(x)
        if stats[1] is not None:
            stats[1].add(x)

    observed = observe_shared_inputs(work, new_stats, update)
    for role, linear in work.linears.items():
        observer, hessian = observed[role]
        if hessian is not None:
            fp8_codes, scales = gptq_fp8(linear.weight, hessian.H, damp=cfg.damp)
            q = Fp8Linear(fp8_codes, scales, float(observer.scale()), cfg.observer)
        else:
            q = quantize_linear_fp8(linear.weight, observer.scale(), cfg.observer)
        install_fp8(linear, q, work.names[role], codes)


def install_fp8(linear: torch.nn.Linear, q: Fp8Linear, name: str, codes: dict) -> None:
    """The linear computes what the engine will: dequantized weights, fake-quantized input."""
    linear.weight.data.copy_(q.dequantize().to(linear.weight.dtype))
    linear.register_forward_pre_hook(lambda _m, args, s=q.input_scale: (fake_quant_fp8(args[0], s), *args[1:]))
    codes[name] = q


def fp8_gptaq_layer(work: LayerWork, cfg: Fp8Config, codes: dict) -> None:
    """FP8 with GPTAQ-fitted weights, one input group at a time in the layer's order (q/k/v,
    o, gate/up, down), so each group sees the earlier ones already quantized:

    1. observe the group's input as the quantized model feeds it -> its activation scale;
    2. pair, token by token, the float model's input to the group (the float layer on the
       float model's hidden states, `work.float_inputs`) with the quantized model's input
       after FP8 rounding at that scale;
    3. fit each linear's weights to the float model's outputs (asymmetric_target), round
       them by GPTQ on the E4M3 grid, and from here on fake-quantize the group's input."""
    if work.float_inputs is None:
        raise RuntimeError("GPTAQ needs the float model's hidden states: run_sequential(float_stream=True)")
    float_layer = copy.deepcopy(work.layer)  # float weights (no hooks yet) for the float stream
    path = {id(m): n for n, m in work.layer.named_modules()}
    batches = list(zip(work.float_inputs, work.inputs, work.kwargs))
    for group in INPUT_GROUPS:
        roles = [r for r in group if r in work.linears]
        if not roles:
            continue
        first = work.linears[roles[0]]
        float_first = float_layer.get_submodule(path[id(first)])
        observer = make_observer(cfg.observer, cfg.percentile)
        for _, xq, kw in batches:
            observer.update(input_of(work.layer, first, xq, kw))
        scale = float(observer.scale())
        pairs = PairAccumulator(first.in_features)
        for x, xq, kw in batches:
            pairs.add_pair(input_of(float_layer, float_first, x, kw),
                           fake_quant_fp8(input_of(work.layer, first, xq, kw), scale))
        for role in roles:
            linear = work.linears[role]
            target = asymmetric_target(linear.weight, pairs.H, pairs.C, cfg.damp)
            fp8_codes, scales = gptq_fp8(target, pairs.H, damp=cfg.damp)
            install_fp8(linear, Fp8Linear(fp8_codes, scales, scale, cfg.observer), work.names[role], codes)


def smooth_layer(work: LayerWork, alpha: float, arch: Any) -> None:
    """SmoothQuant's migration on each smoothing pair of the layer (awq_mappings: norm -> q/k/v,
    norm -> gate/up, up -> down; v -> o where shapes allow): exact in float."""
    absmax = observe_shared_inputs(work, lambda role: torch.zeros(work.linears[role].in_features),
                                   lambda acc, x: torch.maximum(acc, x.detach().abs().reshape(-1, x.shape[-1])
                                                                .amax(0).float(), out=acc))
    for m in awq_mappings(arch):
        linears = [work.linears[r] for r in m.linears if r in work.linears]
        if len(linears) != len(m.linears):
            continue  # part of the group is kept in float
        prev = work.linears.get(m.prev) if m.prev_kind == "linear" else work.layer.get_submodule(m.prev)
        if prev is None or (m.prev_kind == "linear" and prev.out_features != linears[0].in_features):
            continue  # v -> o under GQA
        w_absmax = torch.stack([lin.weight.detach().abs().amax(0).float() for lin in linears]).amax(0)
        s = smoothing_scales(absmax[m.linears[0]], w_absmax, alpha)
        for lin in linears:
            lin.weight.data.mul_(s.to(lin.weight.dtype))
        scale_prev_down(prev, m.prev_kind, s.to(prev.weight.dtype), arch)
