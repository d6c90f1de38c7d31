"""Quantized linears as plain arrays: what lower-quantized-matmul reads (no torch here).

Calibration produces torch objects (`calibration.rtn.QuantizedLinear`,
`calibration.fp8.Fp8Linear`); the build turns them into these records
(`optimizer.quantized.plain_weights`) before the passes run, so passes/ depends on numpy
and onnx_ir only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class IntWeight:
    """Integer codes of one linear, group by group along its input."""

    codes: np.ndarray  # (N, K) uint8 in [0, 2^bits - 1]
    scales: np.ndarray  # (N, groups) float32
    zeros: np.ndarray  # (N, groups) uint8; 2^(bits-1) everywhere when symmetric
    bits: int
    group: int  # input columns per group (K: one group per output channel)

    @property
    def symmetric(self) -> bool:
        return bool((self.zeros == 2 ** (self.bits - 1)).all())


@dataclass(frozen=True)
class Fp8Weight:
    """E4M3 codes of one linear with one scale per output channel, and its input's static scale."""

    codes: np.ndarray  # (N, K) float8_e4m3fn (ml_dtypes)
    scales: np.ndarray  # (N,) float32
    input_scale: float


@dataclass(frozen=True)
class DeferredIntWeight:
    """An IntWeight computed when first read (`load`), with what the lowering needs before
    that: the streaming build quantizes each linear as the engine file is written."""

    shape: tuple[int, int]  # (N, K)
    bits: int
    group: int
    symmetric: bool
    load: Callable[[], IntWeight]


QuantizedWeight = IntWeight | Fp8Weight | DeferredIntWeight
