"""Round-to-nearest group quantization: the shared integer format and the RTN baseline.

A weight W (out, in) is cut into groups of `group_size` consecutive input columns; each
(row, group) gets a scale and, when asymmetric, a zero point:

    symmetric   scale = max|w| / ((2^b - 1) / 2),  zero = 2^(b-1)          (int4: max/7.5, zero 8)
    asymmetric  scale = (max(w, 0) - min(w, 0)) / (2^b - 1),  zero = round(-min / scale)
    q = clamp(round(w / scale) + zero, 0, 2^b - 1),   w_hat = (q - zero) * scale

This is the form onnxruntime's MatMulNBits computes (unsigned codes, per-block scale and zero
point; a symmetric weight needs no zero-point tensor since 2^(b-1) is its default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optimizer.errors import InputError


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    group_size: int | None = 64  # None = per output channel (one group spanning the row)
    symmetric: bool = True

    @property
    def qmax(self) -> int:
        return 2 ** self.bits - 1

    def groups(self, in_features: int) -> int:
        return 1 if self.group_size is None else in_features // self.group_size

    def group_width(self, in_features: int) -> int:
        return in_features if self.group_size is None else self.group_size


@dataclass
class QuantizedLinear:
    """Integer codes and their parameters for one linear layer (torch, CPU)."""

    qweight: torch.Tensor  # (out, in) uint8 codes in [0, 2^b - 1]
    scales: torch.Tensor  # (out, n_groups) float32
    zeros: torch.Tensor  # (out, n_groups) uint8 (2^(b-1) everywhere when symmetric)
    spec: QuantSpec

    def dequantize(self) -> torch.Tensor:
        """(out, in) float32: (q - zero) * scale, group by group."""
        out, n_in = self.qweight.shape
        g = self.spec.group_width(n_in)
        q = self.qweight.float().view(out, -1, g)
        return ((q - self.zeros.float().unsqueeze(-1)) * self.scales.unsqueeze(-1)).view(out, n_in)


def compute_qparams(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for each row of w (rows x group): returns (scale, zero), both (rows,)."""
    if spec.symmetric:
        absmax = w.abs().amax(dim=-1).clamp(min=1e-10)
        scale = absmax / (spec.qmax / 2)
        zero = torch.full_like(scale, 2 ** (spec.bits - 1))
    else:
        lo = w.amin(dim=-1).clamp(max=0)
        hi = w.amax(dim=-1).clamp(min=0)
        scale = ((hi - lo) / spec.qmax).clamp(min=1e-10)
        zero = torch.round(-lo / scale).clamp(0, spec.qmax)
    return scale, zero


def quantize_with(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    """Codes of w (..., g) given per-row scale/zero (...,): clamp(round(w/s) + z, 0, qmax)."""
    return torch.clamp(torch.round(w / scale.unsqueeze(-1)) + zero.unsqueeze(-1), 0, qmax)


def rtn_quantize(weight: torch.Tensor, spec: QuantSpec) -> QuantizedLinear:
    """Round-to-nearest quantization of a (out, in) weight."""
    out, n_in = weight.shape
    check_group_size(n_in, spec.group_size)
    g = spec.group_width(n_in)
    w = weight.detach().float().view(out, -1, g)  # (out, groups, g)
    scale, zero = compute_qparams(w, spec)  # (out, groups)
    q = quantize_with(w, scale, zero, spec.qmax)
    return QuantizedLinear(q.view(out, n_in).to(torch.uint8), scale.float(), zero.to(torch.uint8), spec)


def fake_quantize(weight: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantize then dequantize (same shape and dtype as weight)."""
    return rtn_quantize(weight, spec).dequantize().to(weight.dtype)


def valid_group_sizes(in_features: int) -> list[int]:
    return [g for g in (32, 64, 128) if in_features % g == 0]


def check_group_size(in_features: int, group_size: int | None) -> None:
    if group_size is not None and in_features % group_size != 0:
        valid = valid_group_sizes(in_features)
        raise InputError(
            f"group size {group_size} does not divide a layer's input size {in_features}",
            hint="valid group sizes for this model: " + ", ".join(map(str, valid)) +
                 (", " if valid else "") + "or per-channel (--group-size 0)")
