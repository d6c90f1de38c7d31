"""Round-to-nearest group quantization: the shared integer format and the RTN baseline.

A weight W (out, in) is cut into groups of `group_size` consecutive input columns; each
(row, group) gets a scale and, when asymmetric, a zero point. When `group_size` does not
divide `in`, the last group is narrower (576 = 4 x 128 + 64): it is quantized as if padded
with zero columns, which changes neither its max|w| nor, since the asymmetric range always
spans 0, its min/max; MatMulNBits and blocked DequantizeLinear take such a last block.

    symmetric   scale = max|w| / ((2^b - 1) / 2),  zero = 2^(b-1)          (int4: max/7.5, zero 8)
    asymmetric  scale = (max(w, 0) - min(w, 0)) / (2^b - 1),  zero = round(-min / scale)
    q = clamp(round(w / scale) + zero, 0, 2^b - 1),   w_hat = (q - zero) * scale

This is the form onnxruntime's MatMulNBits computes (unsigned codes, per-block scale and zero
point; a symmetric weight needs no zero-point tensor since 2^(b-1) is its default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    group_size: int | None = 64  # None = per output channel (one group spanning the row)
    symmetric: bool = True

    @property
    def qmax(self) -> int:
        return 2 ** self.bits - 1

    def groups(self, in_features: int) -> int:
        return 1 if self.group_size is None else -(-in_features // self.group_size)

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
        n_in = self.qweight.shape[1]
        q = to_groups(self.qweight.float(), self.spec.group_width(n_in))
        return from_groups((q - self.zeros.float().unsqueeze(-1)) * self.scales.unsqueeze(-1), n_in)

    def dequantized(self) -> torch.Tensor:
        """The same (as calibration.deferred.DeferredLinear names it: what a streamed model's
        reference computes with)."""
        return self.dequantize()


def to_groups(w: torch.Tensor, g: int) -> torch.Tensor:
    """(rows, in) -> (rows, ceil(in / g), g): consecutive columns, the last group zero-padded."""
    pad = -w.shape[1] % g
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.reshape(w.shape[0], -1, g)


def from_groups(wg: torch.Tensor, n_in: int) -> torch.Tensor:
    """The inverse of to_groups: (rows, groups, g) -> (rows, n_in), padding dropped."""
    return wg.reshape(wg.shape[0], -1)[:, :n_in]


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
    n_in = weight.shape[1]
    w = to_groups(weight.detach().float(), spec.group_width(n_in))  # (out, groups, g)
    scale, zero = compute_qparams(w, spec)  # (out, groups)
    q = quantize_with(w, scale, zero, spec.qmax)
    return QuantizedLinear(from_groups(q, n_in).to(torch.uint8).contiguous(), scale.float(), zero.to(torch.uint8), spec)


def fake_quantize(weight: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantize then dequantize (same shape and dtype as weight)."""
    return rtn_quantize(weight, spec).dequantize().to(weight.dtype)
