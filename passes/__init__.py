"""Graph passes over onnx_ir models: an explicit registry, no package scanning.

Each entry names a pass, says what it does, and builds the onnx_ir pass object. The
pipeline (`passes.pipeline.run_passes`) runs them in order and reports, per pass, whether
it changed the graph and how the op counts moved; that report goes into the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx_ir.passes as ir_passes
from onnx_ir.passes import common


@dataclass(frozen=True)
class PassInfo:
    name: str
    description: str
    build: Callable[[], ir_passes.PassBase]


REGISTRY: dict[str, PassInfo] = {
    info.name: info
    for info in (
        PassInfo("cse", "common subexpression elimination: merges identical nodes "
                        "(e.g. the per-layer views of shared RoPE tables)",
                 common.CommonSubexpressionEliminationPass),
        PassInfo("dead-code", "removes nodes whose outputs nothing uses, and unused opset imports",
                 lambda: ir_passes.Sequential(common.RemoveUnusedNodesPass(),
                                              common.RemoveUnusedOpsetsPass())),
    )
}

DEFAULT_PIPELINE: tuple[str, ...] = ("cse", "dead-code")
