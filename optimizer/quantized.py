"""Calibration's torch results as the plain arrays the graph passes read."""

from __future__ import annotations

from typing import Any

import ml_dtypes

from calibration.deferred import DeferredLinear
from calibration.fp8 import Fp8Linear
from calibration.rtn import QuantizedLinear
from passes.quantized_weights import DeferredIntWeight, Fp8Weight, IntWeight, QuantizedWeight


def plain_weight(q: QuantizedLinear | Fp8Linear | DeferredLinear) -> QuantizedWeight:
    if isinstance(q, DeferredLinear):  # a streamed build: computed when the lowering reads it
        n, k = q.shape
        return DeferredIntWeight((n, k), q.spec.bits, q.spec.group_width(k), q.spec.symmetric,
                                 lambda: plain_weight(q.compute()))
    if isinstance(q, Fp8Linear):  # the codes are E4M3 values already: the cast is exact
        return Fp8Weight(q.weight.float().numpy().astype(ml_dtypes.float8_e4m3fn), q.scales.numpy(),
                         float(q.input_scale))
    k = q.qweight.shape[1]
    return IntWeight(q.qweight.numpy(), q.scales.numpy(), q.zeros.numpy(), q.spec.bits, q.spec.group_width(k))


def plain_weights(codes: dict[str, Any]) -> dict[str, QuantizedWeight]:
    """module name -> its quantized weight, for PassContext.codes."""
    return {name: plain_weight(q) for name, q in codes.items()}
