"""RTN group quantization against a float64 reference, for every bit width, group size and symmetry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibration.rtn import QuantSpec, fake_quantize, rtn_quantize
from optimizer.errors import InputError


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
def test_matches_float64_reference(bits, group, symmetric):
    w = torch.randn(48, 256, dtype=torch.float64) * 0.05
    w[3, 7] = 0.9  # an outlier
    spec = QuantSpec(bits, group, symmetric)
    q = rtn_quantize(w, spec)
    ref = reference_rtn(w.numpy(), bits, group, symmetric)
    got = q.dequantize().double().numpy()
    diff = np.abs(got - ref)
    # A group's extreme value lands exactly on a .5 tie under the symmetric max/7.5 rule;
    # float32 and float64 may round that one the other way. Allow those one-step
    # differences (at most one per group) and nothing else.
    step = np.repeat(q.scales.double().numpy(), spec.group_width(256), axis=1)
    assert (diff > 1e-6 * np.abs(ref).max()).sum() <= q.scales.numel()
    assert (diff <= step * 1.0001).all()
    assert q.qweight.dtype == torch.uint8 and int(q.qweight.max()) <= 2 ** bits - 1
    assert q.scales.shape == (48, spec.groups(256))


def test_error_shrinks_with_bits_and_groups():
    w = torch.randn(64, 512)
    err = {(b, g): float((fake_quantize(w, QuantSpec(b, g, False)) - w).pow(2).mean())
           for b in (4, 8) for g in (32, 128, None)}
    assert err[(8, 32)] < err[(4, 32)] / 100
    assert err[(4, 32)] < err[(4, 128)] < err[(4, None)]


def test_symmetric_zero_is_midpoint():
    q = rtn_quantize(torch.randn(8, 64), QuantSpec(4, 32, True))
    assert (q.zeros == 8).all()


def test_group_size_must_divide():
    with pytest.raises(InputError, match="group size 128 does not divide .* 576") as info:
        rtn_quantize(torch.randn(4, 576), QuantSpec(4, 128, True))
    assert "32, 64" in info.value.hint
