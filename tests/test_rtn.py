"""RTN group quantization against a float64 reference, for every bit width, group size and symmetry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibration.rtn import QuantSpec, fake_quantize, rtn_quantize


def reference_rtn(w: np.ndarray, bits: int, group: int | None, symmetric: bool) -> np.ndarray:
    """Dequantized weights, float64, written independently of the implementation."""
    out, n_in = w.shape
    g = n_in if group is None else group
    res = np.empty_like(w)
    qmax = 2 ** bits - 1
    for r in range(out):
        for c0 in range(0, n_in, g):
            x = w[r, c0:c0 + g]
            if symmetric:
                scale = max(np.abs(x).max(), 1e-10) / (qmax / 2)
                zero = 2 ** (bits - 1)
            else:
                lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
                scale = max((hi - lo) / qmax, 1e-10)
                zero = np.clip(np.round(-lo / scale), 0, qmax)
            q = np.clip(np.round(x / scale) + zero, 0, qmax)
            res[r, c0:c0 + g] = (q - zero) * scale
    return res


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64, 128, None])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("n_in", [256, 200])  # 200: the last group is narrower (200 = 128 + 72)
def test_matches_float64_reference(bits, group, symmetric, n_in):
    w = torch.randn(48, n_in, dtype=torch.float64) * 0.05
    w[3, 7] = 0.9  # an outlier
    w[5, -1] = -0.7  # and one in the last (possibly narrower) group
    spec = QuantSpec(bits, group, symmetric)
    q = rtn_quantize(w, spec)
    ref = reference_rtn(w.numpy(), bits, group, symmetric)
    got = q.dequantize().double().numpy()
    diff = np.abs(got - ref)
    # A group's extreme value lands exactly on a .5 tie under the symmetric max/7.5 rule;
    # float32 and float64 may round that one the other way. Allow those one-step
    # differences (at most one per group) and nothing else.
    step = np.repeat(q.scales.double().numpy(), spec.group_width(n_in), axis=1)[:, :n_in]
    assert (diff > 1e-6 * np.abs(ref).max()).sum() <= q.scales.numel()
    assert (diff <= step * 1.0001).all()
    assert q.qweight.dtype == torch.uint8 and int(q.qweight.max()) <= 2 ** bits - 1
    assert q.qweight.shape == (48, n_in)
    assert q.scales.shape == (48, spec.groups(n_in)) == (48, -(-n_in // spec.group_width(n_in)))


def test_error_shrinks_with_bits_and_groups():
    w = torch.randn(64, 512)
    err = {(b, g): float((fake_quantize(w, QuantSpec(b, g, False)) - w).pow(2).mean())
           for b in (4, 8) for g in (32, 128, None)}
    assert err[(8, 32)] < err[(4, 32)] / 100
    assert err[(4, 32)] < err[(4, 128)] < err[(4, None)]


def test_symmetric_zero_is_midpoint():
    q = rtn_quantize(torch.randn(8, 64), QuantSpec(4, 32, True))
    assert (q.zeros == 8).all()


@pytest.mark.parametrize("symmetric", [True, False])
def test_narrow_last_group_is_zero_padding(symmetric):
    """576 = 4 x 128 + 64 (SmolLM2's hidden size): the same codes and parameters as the
    weight padded with zero columns to 640, padding dropped."""
    w = torch.randn(16, 576)
    spec = QuantSpec(4, 128, symmetric)
    q = rtn_quantize(w, spec)
    padded = rtn_quantize(torch.nn.functional.pad(w, (0, 64)), spec)
    assert torch.equal(q.qweight, padded.qweight[:, :576])
    assert torch.equal(q.scales, padded.scales) and torch.equal(q.zeros, padded.zeros)
    assert torch.equal(q.dequantize(), padded.dequantize()[:, :576])
