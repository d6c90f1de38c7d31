"""Quantized weights in standard ONNX form: the arrays DequantizeLinear reads.

Capture stores a linear as MatMul(x, W^T) with W^T (K = in, N = out). In standard form the
weight becomes DequantizeLinear(codes, scale[, zero_point]) -> W^T (opset 21):

- int4 / int8 in groups of g input columns: blocked DQ over axis 0 with block_size g;
  codes (K, N), scale (K / g, N). Symmetric codes are stored signed (q - 2^(b-1): int4 /
  int8, no zero point); asymmetric ones unsigned with a zero-point tensor shaped like scale.
- per-channel int4 / int8: per-axis DQ over axis 1, scale (N,).
- FP8 E4M3: per-axis DQ over axis 1, codes float8e4m3fn (K, N), scale (N,).

Every function is pure: an IntWeight / Fp8Weight (passes.quantized_weights) in, numpy arrays
(ml_dtypes for int4 / fp8) out; DequantizeLinear of the result equals the torch fake-quant
weight's transpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from passes.quantized_weights import Fp8Weight, IntWeight

_SIGNED = {4: ml_dtypes.int4, 8: np.int8}
_UNSIGNED = {4: ml_dtypes.uint4, 8: np.uint8}


@dataclass(frozen=True)
class DqWeight:
    codes: np.ndarray  # (K, N)
    scale: np.ndarray  # (K / block, N) blocked, or (N,) per axis
    zero_point: np.ndarray | None  # like scale, or None
    axis: int
    block_size: int | None  # None: per-axis


def integer_dq_weight(q: IntWeight, scale_dtype: type = np.float32) -> DqWeight:
    bits = q.bits
    codes = q.codes.T  # (K, N) uint8 in [0, 2^b - 1]
    scales = q.scales.T.astype(scale_dtype)  # (groups, N)
    zeros = q.zeros.T  # (groups, N)
    k = codes.shape[0]
    group = q.group
    if q.symmetric:
        stored = (codes.astype(np.int16) - 2 ** (bits - 1)).astype(_SIGNED[bits])
        zero_point = None
    else:
        stored = codes.astype(_UNSIGNED[bits])
        zero_point = zeros.astype(_UNSIGNED[bits])
    if group == k:  # per output channel
        return DqWeight(np.ascontiguousarray(stored), scales[0],
                        None if zero_point is None else zero_point[0], axis=1, block_size=None)
    return DqWeight(np.ascontiguousarray(stored), np.ascontiguousarray(scales),
                    None if zero_point is None else np.ascontiguousarray(zero_point), axis=0, block_size=group)


def fp8_dq_weight(q: Fp8Weight, scale_dtype: type = np.float32) -> DqWeight:
    codes = q.codes.T.astype(ml_dtypes.float8_e4m3fn)
    return DqWeight(np.ascontiguousarray(codes), q.scales.astype(scale_dtype), None, axis=1, block_size=None)


def dequantize(w: DqWeight) -> np.ndarray:
    """What DequantizeLinear computes, in float32 (the tests' reference)."""
    codes = w.codes.astype(np.float32)
    zero = 0.0 if w.zero_point is None else w.zero_point.astype(np.float32)
    scale = w.scale.astype(np.float32)
    if w.block_size is not None:
        zero = zero if w.zero_point is None else np.repeat(zero, w.block_size, axis=0)
        return (codes - zero) * np.repeat(scale, w.block_size, axis=0)
    return (codes - zero) * scale
