"""FP8 (E4M3) W8A8: the number format, per-channel weight scales, and activation observers.

E4M3 (`float8_e4m3fn`) has 4 exponent and 3 mantissa bits, no infinities, and a largest
finite value of 448. A tensor x is stored as q = fp8(clamp(x / s, -448, 448)) (round to
nearest even, saturating: ONNX QuantizeLinear's default) and read back as q * s.

- weights: one scale per output channel, s = max|w_row| / 448 (the row's largest value maps
  to the format's largest);
- activations: one static scale per tensor, chosen from calibration data by an observer:
    minmax      s = max|x| / 448 over every calibration token;
    percentile  s = P(|x|) / 448 at a high percentile (outliers saturate instead of
                stretching the scale);
    mse         s = the candidate c * max|x| / 448 (c in a grid over (0, 1]) with the least
                squared quantization error on the calibration sample.

Optional smoothing (SmoothQuant's migration, `smooth=alpha`): before observing, each input
channel j of a linear group is divided by s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)
(folded into the op that feeds the group: a norm's weight, or the previous linear's rows) and
the group's weight columns are multiplied by s_j; the float model is unchanged. E4M3 keeps
~2^17 of dynamic range per tensor, and a per-tensor scale set by a few huge activation
channels pushes the ordinary channels towards its subnormal range; smoothing narrows the
activations' spread and moves it into the weights, whose scales are per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

E4M3_MAX = 448.0
FP8_DTYPE = torch.float8_e4m3fn
SAMPLE_PER_BATCH = 1 << 16  # activation values kept per observed batch (percentile / mse)
MSE_GRID = 40  # candidate clipping ratios for the MSE observer


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """E4M3 codes of x / scale, saturated to +-448."""
    return torch.clamp(x.float() / scale, -E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)


def _round_trip(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    return (quantize_fp8(x, scale).float() * scale).to(x.dtype)


class _StraightThrough(torch.autograd.Function):
    """E4M3 round trip whose gradient is the identity (the straight-through estimator). The
    cast's own gradient would be rounded to E4M3 on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        return _round_trip(x, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def fake_quant_fp8(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Quantize to E4M3 and back, in x's dtype: what the engine's Q/DQ pair computes. Where x
    needs a gradient (distillation), the gradient passes straight through."""
    return _StraightThrough.apply(x, scale) if x.requires_grad else _round_trip(x, scale)


def weight_scales(w: torch.Tensor) -> torch.Tensor:
    """(out,) per-output-channel scales of a (out, in) weight."""
    return (w.detach().float().abs().amax(dim=1) / E4M3_MAX).clamp(min=1e-12)


def smoothing_scales(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """(in,) s_j = max|x_j|^alpha / max|W_:,j|^(1-alpha), with dead channels left alone (s = 1)."""
    x, w = x_absmax.float(), w_absmax.float()
    s = x.clamp(min=1e-5).pow(alpha) / w.clamp(min=1e-5).pow(1 - alpha)
    return torch.where((x > 0) & (w > 0), s, torch.ones_like(s)).clamp(min=1e-5)


@dataclass
class Fp8Linear:
    """One linear in FP8: E4M3 weight codes with per-channel scales and the static input scale."""

    weight: torch.Tensor  # (out, in) float8_e4m3fn
    scales: torch.Tensor  # (out,) float32
    input_scale: float  # per-tensor activation scale
    observer: str

    def dequantize(self) -> torch.Tensor:
        return self.weight.float() * self.scales.unsqueeze(1)

    def dequantized(self) -> torch.Tensor:
        """The same (as calibration.deferred.DeferredLinear names it: what a streamed model's
        reference computes with)."""
        return self.dequantize()


def quantize_linear_fp8(weight: torch.Tensor, input_scale: float, observer: str) -> Fp8Linear:
    scales = weight_scales(weight)
    return Fp8Linear(quantize_fp8(weight, scales.unsqueeze(1)), scales, float(input_scale), observer)


# --- activation observers ----------------------------------------------------------------

class Observer:
    """Sees every calibration batch of one tensor; returns its per-tensor scale."""

    keeps_samples = False  # percentile / mse need a sample of the values, minmax only the max

    def __init__(self, seed: int = 0) -> None:
        self.amax = 0.0
        self._samples: list[torch.Tensor] = []
        self._generator = torch.Generator().manual_seed(seed)

    def update(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1).float()
        self.amax = max(self.amax, float(flat.abs().max()))
        if self.keeps_samples and flat.numel():
            if flat.numel() > SAMPLE_PER_BATCH:
                flat = flat[torch.randint(0, flat.numel(), (SAMPLE_PER_BATCH,), generator=self._generator)]
            self._samples.append(flat)

    def samples(self) -> torch.Tensor:
        return torch.cat(self._samples) if self._samples else torch.zeros(1)

    def scale(self) -> float:
        raise NotImplementedError


class MinMaxObserver(Observer):
    def scale(self) -> float:
        return max(self.amax, 1e-12) / E4M3_MAX


class PercentileObserver(Observer):
    keeps_samples = True

    def __init__(self, percentile: float = 99.99, seed: int = 0) -> None:
        super().__init__(seed)
        self.percentile = percentile

    def scale(self) -> float:
        clip = float(torch.quantile(self.samples().abs(), self.percentile / 100.0))
        return max(clip, 1e-12) / E4M3_MAX


class MseObserver(Observer):
    keeps_samples = True

    def scale(self) -> float:
        return mse_optimal_scale(self.samples(), self.amax)


def mse_optimal_scale(sample: torch.Tensor, amax: float, grid: int = MSE_GRID) -> float:
    """The scale c * amax / 448 (c in (0, 1]) minimizing the sample's E4M3 round-trip error."""
    best, best_err = max(amax, 1e-12) / E4M3_MAX, float("inf")
    for i in range(grid, 0, -1):
        s = max(amax * i / grid, 1e-12) / E4M3_MAX
        err = float((fake_quant_fp8(sample, s) - sample).pow(2).mean())
        if err < best_err:
            best, best_err = s, err
    return best


OBSERVERS: dict[str, Callable[..., Observer]] = {
    "minmax": MinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MseObserver,
}


def make_observer(name: str, percentile: float = 99.99) -> Observer:
    if name == "percentile":
        return PercentileObserver(percentile)
    return OBSERVERS[name]()
