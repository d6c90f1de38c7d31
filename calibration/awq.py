"""AWQ: activation-aware weight quantization (the math; the per-layer steps live in methods/awq.py).

Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration"
(https://arxiv.org/abs/2306.00978). For a norm (or linear) feeding a set of linears, a
per-input-channel scale s moves difficulty from weights to activations: the linears get
W * s, the feeding op's output is divided by s, so the float function is unchanged while
salient channels (large activations) are quantized more finely. s is searched on a grid:

    s(r) = mean|x|^r / mean|w_hat|^(1 - r)      (w_hat: |W| normalised by its group max)

choosing the r whose fake-quantized block output is closest (MSE) to the float output.
Then each group's clipping range is searched (shrinking max|w| by up to `max_shrink`) to
minimise the linear's output error on sample inputs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from calibration.rtn import QuantSpec, fake_quantize, from_groups, to_groups


def activation_channel_mean(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """mean |x| per input channel over every token of every batch: (in,)."""
    total, count = None, 0
    for x in xs:
        flat = x.reshape(-1, x.shape[-1]).float()
        s = flat.abs().sum(0)
        total = s if total is None else total + s
        count += flat.shape[0]
    return total / count


def weight_channel_mean(weights: Sequence[torch.Tensor], spec: QuantSpec) -> torch.Tensor:
    """mean over output rows of |W| / (its group's max |W|), per input channel: (in,)."""
    w = torch.cat([wi.float() for wi in weights], dim=0)  # (sum out, in)
    n_in = w.shape[1]
    wg = to_groups(w.abs(), spec.group_width(n_in))  # (sum out, groups, g)
    wg = wg / wg.amax(dim=-1, keepdim=True).clamp(min=1e-10)
    return from_groups(wg, n_in).mean(0)


def candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor, ratio: float) -> torch.Tensor:
    """s(r), normalised so that max(s) * min(s) = 1."""
    s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def scaled_fake_quant(weight: torch.Tensor, s: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The weight a linear effectively has after scaling by s and quantizing: Q(W s) / s."""
    return fake_quantize(weight * s, spec) / s


def linear_output_error(E: torch.Tensor, G: torch.Tensor) -> float:
    """sum over tokens x of |E x|^2, given G = sum of x x^T: trace(E G E^T). E (out, in) is a
    weight error (W_s - W), G (in, in): the squared error of the linear's output on those
    tokens, for out * in^2 multiply-adds instead of tokens * out * in."""
    return float(((E @ G) * E).sum())


def search_scales(x_mean: torch.Tensor, weights: Sequence[torch.Tensor], spec: QuantSpec,
                  loss_of: Callable[[torch.Tensor], float], n_grid: int = 20) -> tuple[torch.Tensor, float, float]:
    """Grid search over r in [0, 1): returns (best s, best r, its loss).

    `loss_of(s)` evaluates the block with every weight replaced by scaled_fake_quant(W, s)."""
    if n_grid < 1:
        raise ValueError("n_grid must be >= 1")
    w_mean = weight_channel_mean(weights, spec)
    best = (torch.ones_like(x_mean), 0.0, float("inf"))
    for i in range(n_grid):
        ratio = i / n_grid
        s = candidate_scales(x_mean, w_mean, ratio)
        loss = loss_of(s)
        if loss < best[2]:
            best = (s, ratio, loss)
    return best


def search_clip(weight: torch.Tensor, x: torch.Tensor, spec: QuantSpec, n_grid: int = 20,
                max_shrink: float = 0.5, oc_batch: int = 128) -> torch.Tensor:
    """Per (row, group) clipping threshold minimising the group's output error on x.

    weight (out, in), x (tokens, in). Returns max_val (out, groups): clamp W to [-max, max].
    The error of a (row, group) is mean over tokens of (x_g . (q - w))^2; where the group is
    narrower than the token count it is scored as d^T G_g d / tokens through the group's Gram
    matrix G_g = sum x_g x_g^T (clip_errors_gram): g multiply-adds per weight and grid point
    instead of tokens, the same number up to float rounding."""
    out, n_in = weight.shape
    g = spec.group_width(n_in)
    xg = to_groups(x.float(), g)  # (t, groups, g); a narrower last group is zero-padded
    use_gram = g < xg.shape[0]
    if use_gram:
        G = torch.einsum("tgk,tgl->gkl", xg, xg) / xg.shape[0]  # (groups, g, g)
        oc_batch = max(oc_batch, 1024)  # (o, groups, g) errors are small: fewer, larger batches
    best_all = []
    for o1 in range(0, out, oc_batch):
        w = to_groups(weight[o1:o1 + oc_batch].float(), g)  # (o, groups, g)
        org_max = w.abs().amax(dim=-1)  # (o, groups)
        if not use_gram:
            org_out = torch.einsum("tgk,ogk->otg", xg, w)
        best_err = torch.full_like(org_max, float("inf"))
        best_max = org_max.clone()
        for i in range(int(max_shrink * n_grid)):
            max_val = org_max * (1 - i / n_grid)
            clipped = torch.maximum(torch.minimum(w, max_val.unsqueeze(-1)), -max_val.unsqueeze(-1))
            q = fake_quantize(clipped.reshape(w.shape[0], -1), spec).view_as(w)
            if use_gram:
                err = clip_errors_gram(q - w, G)
            else:
                err = (torch.einsum("tgk,ogk->otg", xg, q) - org_out).pow(2).mean(dim=1)  # (o, groups)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better, max_val, best_max)
        best_all.append(best_max)
    return torch.cat(best_all)


def clip_errors_gram(d: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """d_og^T G_g d_og for every (row o, group g): d (o, groups, g) weight differences, G
    (groups, g, g) each group's (token-averaged) Gram matrix; returns (o, groups)."""
    dg = d.transpose(0, 1)  # (groups, o, g)
    return (torch.bmm(dg, G) * dg).sum(-1).t()


def apply_clip(weight: torch.Tensor, max_val: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    n_in = weight.shape[1]
    w = to_groups(weight, spec.group_width(n_in))
    m = max_val.unsqueeze(-1).to(weight.dtype)
    return from_groups(torch.maximum(torch.minimum(w, m), -m), n_in).contiguous()
