"""AWQ's per-layer steps: activation-aware scaling of each smoothing group, then rounding to
nearest after a clipping search (awq), or GPTQ rounding of the scaled weights (awq-gptq).
The math is in calibration/awq.py."""

from __future__ import annotations

from typing import Any

import torch

from calibration import awq
from calibration.config import AwqConfig, AwqGptqConfig
from calibration.gptq import HessianAccumulator, gptq_quantize
from calibration.mappings import awq_mappings
from calibration.methods.hooks import capture_calls, store_quantized
from calibration.rtn import QuantizedLinear, rtn_quantize
from calibration.sequential import LayerWork


def awq_layer(work: LayerWork, cfg: AwqConfig, codes: dict[str, QuantizedLinear], arch: Any) -> None:
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


def awq_gptq_layer(work: LayerWork, cfg: AwqGptqConfig, codes: dict[str, QuantizedLinear], arch: Any) -> None:
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


def awq_scale_layer(work: LayerWork, cfg: AwqConfig | AwqGptqConfig, arch: Any) -> dict[str, list[torch.Tensor]]:
    """AWQ's activation-aware scaling of each smoothing group of the layer (exact in float:
    the feeding op is scaled down by what the linears are scaled up by), the scale chosen by
    grid search on the group's output error after round-to-nearest. Returns each linear's
    calibration inputs as it now receives them (scaled)."""
    layer, spec = work.layer, cfg.spec
    captured = capture_calls(work, {**work.linears, "self_attn": layer.self_attn})
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
        scale_prev_down(prev, m.prev_kind, s, arch)
        scaled = [x / s for x in xs]  # what the scaled linears now receive
        for r in m.linears:
            inputs[r] = scaled
    return inputs


def scale_prev_down(prev: torch.nn.Module, kind: str, s: torch.Tensor, arch: Any) -> None:
    """Divide the feeding op's output channels by s (exactly compensating W * s)."""
    if kind == "linear":
        prev.weight.data.div_(s.unsqueeze(1))
        if prev.bias is not None:
            prev.bias.data.div_(s)
    else:
        offset = arch.norm_weight_offset  # Gemma: y = x_hat * (offset + w)
        prev.weight.data.copy_((prev.weight.data + offset) / s - offset)
