"""Per-layer steps of each calibrated method, run by the sequential driver.

Each step quantizes the layer's linears in place (their weights become the dequantized,
"fake-quant" values, so the torch model computes what the engine will) and records the
integer codes in `codes[module_name]` for lowering to MatMulNBits.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from calibration import awq
from calibration.config import QuantConfig
from calibration.fp8 import Fp8Linear, fake_quant_fp8, make_observer, quantize_linear_fp8, smoothing_scales
from calibration.gptq import HessianAccumulator, PairAccumulator, asymmetric_target, gptq_fp8, gptq_quantize
from calibration.mappings import INPUT_GROUPS, awq_mappings
from calibration.rtn import QuantizedLinear, rtn_quantize
from calibration.sequential import LayerWork, call_layer


def store_quantized(linear: torch.nn.Linear, q: QuantizedLinear, name: str, codes: dict[str, QuantizedLinear]) -> None:
    linear.weight.data.copy_(q.dequantize().to(linear.weight.dtype))
    codes[name] = q


def _capture_calls(work: LayerWork, modules: dict[str, torch.nn.Module]) -> dict[str, list]:
    """Run the layer once; return each module's (input, kwargs) per batch."""
    seen: dict[str, list] = {name: [] for name in modules}
    handles = []
    for name, module in modules.items():
        def hook(_m, args, kwargs, name=name):
            seen[name].append((args[0] if args else kwargs["hidden_states"], kwargs))

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        work.run()
    finally:
        for h in handles:
            h.remove()
    return seen


# --- GPTQ --------------------------------------------------------------------------------

def observe_shared_inputs(work: LayerWork, new_stat: Callable[[str], Any],
                          update: Callable[[Any, torch.Tensor], None]) -> dict[str, Any]:
    """Run the layer once, feeding each group of linears that read one tensor (INPUT_GROUPS)
    into one statistic made by new_stat(first role); returns role -> its group's statistic."""
    stats: dict[str, Any] = {}
    handles = []
    for group in INPUT_GROUPS:
        present = [r for r in group if r in work.linears]
        if not present:
            continue
        stat = new_stat(present[0])
        stats.update({r: stat for r in present})
        def hook(_m, args, stat=stat) -> None:  # returns None: the input passes through unchanged
            update(stat, args[0])

        handles.append(work.linears[present[0]].register_forward_pre_hook(hook))
    try:
        work.run()
    finally:
        for h in handles:
            h.remove()
    return stats


def gptq_layer(work: LayerWork, cfg: QuantConfig, codes: dict[str, QuantizedLinear], arch: Any = None) -> None:
    hessians = observe_shared_inputs(work, lambda role: HessianAccumulator(work.linears[role].in_features),
                                     lambda acc, x: acc.add(x))
    for role, linear in work.linears.items():
        q = gptq_quantize(linear.weight, hessians[role].H, cfg.spec, act_order=cfg.act_order, damp=cfg.damp)
        store_quantized(linear, q, work.names[role], codes)


# --- FP8 W8A8 ----------------------------------------------------------------------------

def fp8_layer(work: LayerWork, cfg: QuantConfig, codes: dict, arch: Any = None) -> None:
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
        _install_fp8(linear, q, work.names[role], codes)


def _install_fp8(linear: torch.nn.Linear, q: Fp8Linear, name: str, codes: dict) -> None:
    """The linear computes what the engine will: dequantized weights, fake-quantized input."""
    linear.weight.data.copy_(q.dequantize().to(linear.weight.dtype))
    linear.register_forward_pre_hook(lambda _m, args, s=q.input_scale: (fake_quant_fp8(args[0], s), *args[1:]))
    codes[name] = q


def fp8_gptaq_layer(work: LayerWork, cfg: QuantConfig, codes: dict) -> None:
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
            observer.update(_input_of(work.layer, first, xq, kw))
        scale = float(observer.scale())
        pairs = PairAccumulator(first.in_features)
        for x, xq, kw in batches:
            pairs.add_pair(_input_of(float_layer, float_first, x, kw),
                           fake_quant_fp8(_input_of(work.layer, first, xq, kw), scale))
        for role in roles:
            linear = work.linears[role]
            target = asymmetric_target(linear.weight, pairs.H, pairs.C, cfg.damp)
            fp8_codes, scales = gptq_fp8(target, pairs.H, damp=cfg.damp)
            _install_fp8(linear, Fp8Linear(fp8_codes, scales, scale, cfg.observer), work.names[role], codes)


class _Captured(Exception):
    pass


def _input_of(layer: torch.nn.Module, module: torch.nn.Module, x: torch.Tensor,
              kwargs: dict[str, Any]) -> torch.Tensor:
    """The tensor `module` receives when `layer` runs on x (the rest of the layer is skipped)."""
    seen: list[torch.Tensor] = []

    def hook(_m, args) -> None:
        seen.append(args[0])
        raise _Captured

    handle = module.register_forward_pre_hook(hook)
    try:
        call_layer(layer, x, kwargs)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"{type(module).__name__} was not called by its decoder layer")
    return seen[0]


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
        _scale_prev_down(prev, m.prev_kind, s.to(prev.weight.dtype), arch)


# --- AWQ ---------------------------------------------------------------------------------

def awq_layer(work: LayerWork, cfg: QuantConfig, codes: dict[str, QuantizedLinear], arch: Any) -> None:
    """AWQ: scale salient input channels (awq_scale_layer), then search each linear's clipping
    range and round to nearest."""
    inputs = awq_scale_layer(work, cfg, arch)
    for role, linear in work.linears.items():
        w = linear.weight.data
        if cfg.awq_clip and role not in ("q", "k"):  # q/k feed a softmax: AWQ leaves them unclipped
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs[role]])
            x = x[torch.linspace(0, len(x) - 1, min(512, len(x))).long()]
            w = awq.apply_clip(w, awq.search_clip(w, x, cfg.spec), cfg.spec)
        store_quantized(linear, rtn_quantize(w, cfg.spec), work.names[role], codes)


def awq_gptq_layer(work: LayerWork, cfg: QuantConfig, codes: dict[str, QuantizedLinear], arch: Any) -> None:
    """AWQ's scaling (awq_scale_layer), then GPTQ rounding of the scaled weights against the
    Hessians of their scaled inputs. GPTQ's error feedback takes the place of AWQ's clipping
    search. Measured against AWQ and GPTQ alone: benchmarks/results/int4-formats/fast-quality/."""
    inputs = awq_scale_layer(work, cfg, arch)
    hessians: dict[int, HessianAccumulator] = {}  # linears reading one tensor share a Hessian
    for role, linear in work.linears.items():
        xs = inputs[role]
        hessian = hessians.get(id(xs[0]))
        if hessian is None:
            hessian = hessians[id(xs[0])] = HessianAccumulator(linear.in_features)
            for x in xs:
                hessian.add(x)
        q = gptq_quantize(linear.weight, hessian.H, cfg.spec, act_order=cfg.act_order, damp=cfg.damp)
        store_quantized(linear, q, work.names[role], codes)


def awq_scale_layer(work: LayerWork, cfg: QuantConfig, arch: Any) -> dict[str, list[torch.Tensor]]:
    """AWQ's activation-aware scaling of each smoothing group of the layer (exact in float:
    the feeding op is scaled down by what the linears are scaled up by), the scale chosen by
    grid search on the group's output error after round-to-nearest. Returns each linear's
    calibration inputs as it now receives them (scaled)."""
    layer, spec = work.layer, cfg.spec
    captured = _capture_calls(work, {**work.linears, "self_attn": layer.self_attn})
    inputs = {r: [x for x, _ in captured[r]] for r in work.linears}  # q/k/v share tensors
    attn_kwargs = [kw for _, kw in captured["self_attn"]]
    n_loss = max(1, -(-cfg.awq_loss_sequences // cfg.batch_size))  # batches scoring the grid

    def inspect_fn(name: str):
        if name == "self_attn":
            return lambda x, b: layer.self_attn(hidden_states=x, **{k: v for k, v in attn_kwargs[b].items()
                                                                     if k != "hidden_states"})[0]
        if name == "mlp":
            return lambda x, b: layer.mlp(x)
        return lambda x, b: work.linears[name](x)

    for m in awq_mappings(arch):
        linears = {r: work.linears[r] for r in m.linears if r in work.linears}
        if len(linears) != len(m.linears):
            continue  # some of the block is kept in float: leave its scaling alone
        prev = work.linears.get(m.prev) if m.prev_kind == "linear" else layer.get_submodule(m.prev)
        if prev is None or (m.prev_kind == "linear" and prev.out_features != next(iter(linears.values())).in_features):
            continue  # e.g. v -> o under GQA: v's outputs are not o's inputs one to one
        xs = inputs[m.linears[0]]
        fn = inspect_fn(m.inspect)
        originals = {r: lin.weight.data.clone() for r, lin in linears.items()}
        reference = [fn(xs[b], b) for b in range(min(n_loss, len(xs)))]

        def loss_of(s: torch.Tensor) -> float:
            for r, lin in linears.items():
                lin.weight.data.copy_(awq.scaled_fake_quant(originals[r], s, spec))
            err = sum(float((fn(xs[b], b) - ref).float().pow(2).sum()) for b, ref in enumerate(reference))
            return err / sum(ref.numel() for ref in reference)

        s, _, _ = awq.search_scales(awq.activation_channel_mean(xs), list(originals.values()), spec,
                                    loss_of, cfg.awq_grid)
        for r, lin in linears.items():
            lin.weight.data.copy_(originals[r] * s)
        _scale_prev_down(prev, m.prev_kind, s, arch)
        scaled = [x / s for x in xs]  # what the scaled linears now receive
        for r in m.linears:
            inputs[r] = scaled
    return inputs


def _scale_prev_down(prev: torch.nn.Module, kind: str, s: torch.Tensor, arch: Any) -> None:
    """Divide the feeding op's output channels by s (exactly compensating W * s)."""
    if kind == "linear":
        prev.weight.data.div_(s.unsqueeze(1))
        if prev.bias is not None:
            prev.bias.data.div_(s)
    else:
        offset = arch.norm_weight_offset  # Gemma: y = x_hat * (offset + w)
        prev.weight.data.copy_((prev.weight.data + offset) / s - offset)
