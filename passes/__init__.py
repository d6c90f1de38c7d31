"""Graph passes over onnx_ir models: an explicit registry, no package scanning.

Each entry names a pass, says what it does, and builds the onnx_ir pass object from the
build's `PassContext` (the quantized codes, engine options). The pipeline
(`passes.pipeline.run_passes`) runs them in order and reports, per pass, whether it changed
the graph and how the op counts moved; that report goes into the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import onnx_ir.passes as ir_passes
from onnx_ir.passes import common

from passes.lower_quantized_matmul import LowerQuantizedMatMul


@dataclass(frozen=True)
class PassContext:
    codes: dict[str, Any] = field(default_factory=dict)  # module name -> QuantizedLinear
    accuracy_level: int = 0  # MatMulNBits: 0 = fp32 compute, 4 = int8 activations (faster)


@dataclass(frozen=True)
class PassInfo:
    name: str
    description: str
    build: Callable[[PassContext], ir_passes.PassBase]


REGISTRY: dict[str, PassInfo] = {
    info.name: info
    for info in (
        PassInfo("lower-quantized-matmul", "quantized linears (MatMul + float weight) -> MatMulNBits "
                                           "with packed int4/int8 codes, scales and zero points",
                 lambda ctx: LowerQuantizedMatMul(ctx.codes, ctx.accuracy_level)),
        PassInfo("cse", "common subexpression elimination: merges identical nodes "
                        "(e.g. the per-layer views of shared RoPE tables)",
                 lambda ctx: common.CommonSubexpressionEliminationPass()),
        PassInfo("dead-code", "removes nodes whose outputs nothing uses, and unused opset imports",
                 lambda ctx: ir_passes.Sequential(common.RemoveUnusedNodesPass(),
                                                  common.RemoveUnusedOpsetsPass())),
    )
}

DEFAULT_PIPELINE: tuple[str, ...] = ("lower-quantized-matmul", "cse", "dead-code")
