"""AWQ's per-layer steps: activation-aware scaling of each smoothing group, then rounding to
nearest after a clipping search (awq), or GPTQ rounding of the scaled weights (awq-gptq).
The math is in calibration/awq.py."""

from __future__ import annotations

from typing import Any, Callable

import torch

from calibration import awq
from calibration.config import AwqConfig, AwqGptqConfig
from calibration.gptq import HessianAccumulator, add_gram_, gptq_quantize_shared
from calibration.mappings import awq_mappings
from calibration.methods.hooks import capture_calls, store_quantized
from calibration.rtn import QuantizedLinear, QuantSpec, rtn_quantize
from calibration.sequential import LayerWork


# tokens per MLP call while scoring the grid: (1024, intermediate) activations are reused by the
# allocator from call to call where (4096, intermediate) ones are mapped and faulted in afresh
MLP_CHUNK = 1024


def awq_layer(work: LayerWork, cfg: AwqConfig, codes: dict[str, QuantizedLinear], arch: Any) -> None:
    """AWQ: scale salient input channels (awq_scale_layer), then search each linear's clipping
    range and round to nearest."""
    inputs, scales = awq_scale_layer(work, cfg, arch)
    for role, linear in work.linears.items():
        w = linear.weight.data
        if cfg.awq_clip and role not in ("q", "k"):  # q/k feed a softmax: AWQ leaves them unclipped
            x = spread_rows(inputs[role], 512)
            if role in scales:
                x = x / scales[role]  # what the scaled linear now receives
            w = awq.apply_clip(w, awq.search_clip(w, x, cfg.spec), cfg.spec)
        store_quantized(linear, rtn_quantize(w, cfg.spec), work.names[role], codes)


def spread_rows(xs: list[torch.Tensor], n: int) -> torch.Tensor:
    """n token rows spread evenly over the batches xs (each (..., in)), first and last
    included: rows linspace(0, total - 1, n) of their concatenation, without concatenating."""
    flat = [x.reshape(-1, x.shape[-1]) for x in xs]
    device = flat[0].device  # the activations' (the GPU where calibration runs there)
    starts = torch.tensor([0] + [len(f) for f in flat], device=device).cumsum(0)
    idx = torch.linspace(0, int(starts[-1]) - 1, min(n, int(starts[-1])), device=device).long()
    which = torch.searchsorted(starts, idx, right=True) - 1  # the batch of each row
    return torch.cat([flat[b][idx[which == b] - starts[b]] for b in range(len(flat)) if (which == b).any()])


def awq_gptq_layer(work: LayerWork, cfg: AwqGptqConfig, codes: dict[str, QuantizedLinear], arch: Any) -> None:
    """AWQ's scaling (awq_scale_layer), then GPTQ rounding of the scaled weights against the
    Hessians of their scaled inputs. GPTQ's error feedback takes the place of AWQ's clipping
    search. Measured against AWQ and GPTQ alone: benchmarks/results/int4-formats/fast-quality/."""
    inputs, scales = awq_scale_layer(work, cfg, arch)
    shared: dict[int, list[str]] = {}  # linears reading one tensor share a Hessian: rounded as one
    for role in work.linears:
        shared.setdefault(id(inputs[role][0]), []).append(role)
    for roles in shared.values():
        hessian = HessianAccumulator(work.linears[roles[0]].in_features)
        s = scales.get(roles[0])
        for x in inputs[roles[0]]:
            hessian.add(x if s is None else x / s)  # what the scaled linears now receive
        qs = gptq_quantize_shared([work.linears[r].weight for r in roles], hessian.H, cfg.spec,
                                  act_order=cfg.act_order, damp=cfg.damp)
        for role, q in zip(roles, qs):
            store_quantized(work.linears[role], q, work.names[role], codes)


def awq_scale_layer(work: LayerWork, cfg: AwqConfig | AwqGptqConfig,
                    arch: Any) -> tuple[dict[str, list[torch.Tensor]], dict[str, torch.Tensor]]:
    """AWQ's activation-aware scaling of each smoothing group of the layer (exact in float:
    the feeding op is scaled down by what the linears are scaled up by), the scale chosen by
    grid search on the group's output error after round-to-nearest. Returns each linear's
    calibration inputs as captured (per batch, before scaling) and, for each scaled linear,
    the s its inputs are now divided by."""
    layer, spec = work.layer, cfg.spec
    captured = capture_calls(work, {**work.linears, "self_attn": layer.self_attn})
    inputs = {r: [x for x, _ in captured[r]] for r in work.linears}  # q/k/v share tensors
    attn_kwargs = [kw for _, kw in captured["self_attn"]]
    n_loss = max(1, -(-cfg.awq_loss_sequences // cfg.batch_size))  # batches scoring the grid
    scales: dict[str, torch.Tensor] = {}

    for m in awq_mappings(arch):
        linears = {r: work.linears[r] for r in m.linears if r in work.linears}
        if len(linears) != len(m.linears):
            continue  # some of the block is kept in float: leave its scaling alone
        prev = work.linears.get(m.prev) if m.prev_kind == "linear" else layer.get_submodule(m.prev)
        if prev is None or (m.prev_kind == "linear" and prev.out_features != next(iter(linears.values())).in_features):
            continue  # e.g. v -> o under GQA: v's outputs are not o's inputs one to one
        xs = inputs[m.linears[0]]
        originals = {r: lin.weight.data.clone() for r, lin in linears.items()}
        if m.inspect in linears:
            loss_of = linear_loss(originals[m.inspect], xs[:n_loss], spec)
        else:
            scoring = xs[:n_loss]
            if m.inspect == "mlp":  # token by token: scored in chunks, whose intermediates stay small
                scoring = [c for x in scoring for c in x.reshape(-1, x.shape[-1]).split(MLP_CHUNK)]
            loss_of = block_loss(inspect_fn(work, m.inspect, attn_kwargs), linears, originals, scoring, spec)
        s, _, _ = awq.search_scales(awq.activation_channel_mean(xs), list(originals.values()), spec,
                                    loss_of, cfg.awq_grid)
        for r, lin in linears.items():
            lin.weight.data.copy_(originals[r] * s)
        scale_prev_down(prev, m.prev_kind, s, arch)
        scales.update({r: s for r in m.linears})
    return inputs, scales


def inspect_fn(work: LayerWork, name: str, attn_kwargs: list[dict]) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The module whose output scores a smoothing group, as a function of (input, batch index)."""
    if name == "self_attn":
        return lambda x, b: work.layer.self_attn(
            hidden_states=x, **{k: v for k, v in attn_kwargs[b].items() if k != "hidden_states"})[0]
    if name == "mlp":
        return lambda x, b: work.layer.mlp(x)
    return lambda x, b: work.linears[name](x)


def block_loss(fn: Callable[[torch.Tensor, int], torch.Tensor], linears: dict[str, torch.nn.Linear],
               originals: dict[str, torch.Tensor], xs: list[torch.Tensor],
               spec: QuantSpec) -> Callable[[torch.Tensor], float]:
    """loss_of(s): the mean squared difference of the block fn's output on the batches xs
    with the linears' weights replaced by scaled_fake_quant(W, s), from its float output."""
    reference = [fn(x, b) for b, x in enumerate(xs)]
    numel = sum(ref.numel() for ref in reference)

    def loss_of(s: torch.Tensor) -> float:
        for r, lin in linears.items():
            lin.weight.data.copy_(awq.scaled_fake_quant(originals[r], s, spec))
        return sum(float((fn(x, b) - ref).float().pow(2).sum()) for b, (x, ref) in enumerate(zip(xs, reference))) / numel

    return loss_of


def linear_loss(W: torch.Tensor, xs: list[torch.Tensor], spec: QuantSpec) -> Callable[[torch.Tensor], float]:
    """block_loss for a block that is the scaled linear itself (down after up, o after v):
    the error x (W_s - W)^T of its output, scored through the Gram matrix of its inputs
    (awq.linear_output_error) where that is the cheaper product (fewer input channels than
    scoring tokens), else on the inputs themselves."""
    n_tokens = sum(x.numel() // x.shape[-1] for x in xs)
    numel = n_tokens * W.shape[0]
    if W.shape[1] < n_tokens:
        G = gram(xs)
        return lambda s: awq.linear_output_error(awq.scaled_fake_quant(W, s, spec) - W, G) / numel
    return lambda s: sum(float((x @ (awq.scaled_fake_quant(W, s, spec) - W).t()).pow(2).sum()) for x in xs) / numel


def gram(xs: list[torch.Tensor]) -> torch.Tensor:
    """sum over every token row x of xs of x x^T: (in, in)."""
    n = xs[0].shape[-1]
    G = torch.zeros(n, n, device=xs[0].device)
    for x in xs:
        add_gram_(G, x.reshape(-1, n).float(), 1.0)
    return G


def scale_prev_down(prev: torch.nn.Module, kind: str, s: torch.Tensor, arch: Any) -> None:
    """Divide the feeding op's output channels by s (exactly compensating W * s)."""
    if kind == "linear":
        prev.weight.data.div_(s.unsqueeze(1))
        if prev.bias is not None:
            prev.bias.data.div_(s)
    else:
        offset = arch.norm_weight_offset  # Gemma: y = x_hat * (offset + w)
        prev.weight.data.copy_((prev.weight.data + offset) / s - offset)
