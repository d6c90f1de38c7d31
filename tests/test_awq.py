"""AWQ math: scale statistics and candidates, grid search, clipping; and that the scaling it
applies leaves the float function unchanged."""

from __future__ import annotations

import numpy as np
import torch

from calibration import awq
from calibration.rtn import QuantSpec, fake_quantize

SPEC = QuantSpec(4, 32, False)


def test_channel_statistics_match_float64():
    xs = [torch.randn(2, 10, 64), torch.randn(3, 5, 64)]
    flat = np.concatenate([x.reshape(-1, 64).numpy().astype(np.float64) for x in xs])
    assert np.allclose(awq.activation_channel_mean(xs).numpy(), np.abs(flat).mean(0), rtol=1e-5)
    ws = [torch.randn(16, 64), torch.randn(8, 64)]
    w = np.concatenate([t.numpy().astype(np.float64) for t in ws])
    g = np.abs(w).reshape(-1, 32)
    ref = (g / g.max(1, keepdims=True)).reshape(w.shape).mean(0)
    assert np.allclose(awq.weight_channel_mean(ws, SPEC).numpy(), ref, rtol=1e-5)


def test_candidate_scales_are_normalised():
    x_mean, w_mean = torch.rand(64) + 0.1, torch.rand(64) + 0.1
    for ratio in (0.0, 0.3, 0.9):
        s = awq.candidate_scales(x_mean, w_mean, ratio)
        assert abs(float(s.max() * s.min()) - 1.0) < 1e-4
    assert torch.allclose(awq.candidate_scales(x_mean, torch.ones(64), 0.0), torch.ones(64), atol=1e-3)


def test_search_picks_lowest_loss():
    losses = {}

    def loss_of(s):
        value = float((s - 2.0).abs().mean())
        losses[len(losses)] = value
        return value

    s, ratio, loss = awq.search_scales(torch.rand(32) * 10 + 0.1, [torch.randn(8, 32)], SPEC, loss_of, 10)
    assert loss == min(losses.values()) and ratio == list(losses.values()).index(loss) / 10


def test_scaling_beats_rtn_with_salient_channels():
    torch.manual_seed(0)
    x = torch.randn(4096, 128)
    x[:, :6] *= 30  # salient input channels
    w = torch.randn(96, 128) * 0.05
    ref = x @ w.T

    def loss_of(s):
        return float((x @ awq.scaled_fake_quant(w, s, SPEC).T - ref).pow(2).mean())

    rtn_loss = float((x @ fake_quantize(w, SPEC).T - ref).pow(2).mean())
    _, ratio, best = awq.search_scales(awq.activation_channel_mean([x]), [w], SPEC, loss_of, 20)
    assert best < 0.7 * rtn_loss and ratio > 0


def test_clip_search_reduces_error():
    torch.manual_seed(1)
    w = torch.randn(64, 128) * 0.05
    w[::7, ::13] *= 8  # outliers that stretch the ranges
    x = torch.randn(512, 128)
    max_val = awq.search_clip(w, x, SPEC)
    clipped = awq.apply_clip(w, max_val, SPEC)
    assert (clipped.abs() <= w.abs() + 1e-7).all()
    err = lambda q: float((x @ q.T - x @ w.T).pow(2).mean())  # noqa: E731
    assert err(fake_quantize(clipped, SPEC)) < err(fake_quantize(w, SPEC))


def test_scale_then_unscale_preserves_float_function():
    """W * s with the feeding op divided by s: the layer computes the same function."""
    torch.manual_seed(2)
    norm_w, x_hat = torch.rand(64) + 0.5, torch.randn(10, 64)
    w = torch.randn(32, 64)
    s = awq.candidate_scales(torch.rand(64) + 0.1, torch.rand(64) + 0.1, 0.5)
    for offset in (0.0, 1.0):  # Llama norms scale by w, Gemma norms by 1 + w
        before = (x_hat * (norm_w + offset)) @ w.T
        new_norm = (norm_w + offset) / s - offset
        after = (x_hat * (new_norm + offset)) @ (w * s).T
        assert torch.allclose(before, after, atol=1e-4)


def test_narrow_last_group():
    """96 = 64 + 32 under groups of 64: statistics, clipping and scaling on the narrower last group."""
    spec = QuantSpec(4, 64, True)
    torch.manual_seed(2)
    w = torch.randn(32, 96) * 0.05
    w[::5, 90] = 0.6  # an outlier in the narrow group
    x = torch.randn(256, 96)
    g = np.abs(w.numpy().astype(np.float64))
    ref = np.concatenate([g[:, :64] / g[:, :64].max(1, keepdims=True), g[:, 64:] / g[:, 64:].max(1, keepdims=True)], 1)
    assert np.allclose(awq.weight_channel_mean([w], spec).numpy(), ref.mean(0), rtol=1e-5)
    max_val = awq.search_clip(w, x, spec)
    assert max_val.shape == (32, 2)
    clipped = awq.apply_clip(w, max_val, spec)
    assert clipped.shape == w.shape and (clipped.abs() <= w.abs() + 1e-7).all()
    err = lambda q: float((x @ q.T - x @ w.T).pow(2).mean())  # noqa: E731
    assert err(fake_quantize(clipped, spec)) < err(fake_quantize(w, spec))
