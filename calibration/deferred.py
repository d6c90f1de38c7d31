"""Quantization of a streamed model (weights on disk): codes computed when they are read.

A streaming build never holds the model's float weights: `quantize_model` records, for each
linear, how its codes are made (`DeferredLinear`: round-to-nearest of one checkpoint tensor),
and the lowering pass computes them while the engine file is written, one linear at a time
(passes.lower_quantized_matmul, DeferredIntWeight). The same record gives the dequantized
weight the torch reference computes with at verification. The calibrated methods (AWQ, GPTQ,
AWQ-GPTQ, FP8) stream differently: the layer-by-layer driver (calibration.sequential) reads
each layer from disk for its own turn and keeps only its codes and the small parameters
calibration changed (`LoadedModel.override_weights`); FP8 distillation is not streamed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from calibration.rtn import QuantizedLinear, QuantSpec, rtn_quantize


BLOCK_ELEMENTS = 1 << 24  # weights quantized per block of rows: 64 MB of float32 temporaries


@dataclass(frozen=True)
class DeferredLinear:
    """The RTN codes of checkpoint tensor `tensor` (out, in), computed on request."""

    tensor: str
    shape: tuple[int, int]
    spec: QuantSpec
    source: Any  # optimizer.models.weight_source.WeightSource

    def compute(self) -> QuantizedLinear:
        """RTN codes, computed over blocks of rows (each row is quantized on its own: the same
        codes as one call, with float temporaries of a block, not of a vocabulary-sized table)."""
        parts = [rtn_quantize(self.source.tensor(self.tensor, rows), self.spec) for rows in self._blocks()]
        return QuantizedLinear(torch.cat([p.qweight for p in parts]), torch.cat([p.scales for p in parts]),
                               torch.cat([p.zeros for p in parts]), self.spec)

    def dequantized(self) -> torch.Tensor:
        """(out, in) float32: what the torch reference computes with."""
        q = self.compute()
        out = torch.empty(self.shape)
        for rows in self._blocks():
            out[rows] = QuantizedLinear(q.qweight[rows], q.scales[rows], q.zeros[rows], self.spec).dequantize()
        return out

    def _blocks(self) -> list[slice]:
        n, k = self.shape
        step = max(1, BLOCK_ELEMENTS // k)
        return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def deferred_rtn(source: Any, tensor: str, spec: QuantSpec) -> DeferredLinear:
    shape = tuple(source.shape(tensor))
    if len(shape) != 2:
        raise ValueError(f"{tensor} is not a matrix: shape {list(shape)}")
    return DeferredLinear(tensor, shape, spec, source)
