"""Constant folding with onnxscript's folder: nodes whose inputs are all constants are
evaluated at build time (shape arithmetic on constants, casts of constants, Transposes of
small constants), so onnxruntime neither computes nor re-derives them at load.

Large results are not materialised (onnxscript's size limits): folding the tied lm_head's
Transpose would store the embedding twice on disk; onnxruntime transposes it once at load.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes as ir_passes
from onnxscript import optimizer


class FoldConstants(ir_passes.InPlacePass):
    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        before = sum(1 for _ in model.graph)
        result = optimizer.fold_constants(model)
        after = sum(1 for _ in model.graph)
        if after != before:
            self.notes.append(f"{before - after} nodes folded into constants")
        return ir_passes.PassResult(model, modified=bool(result.modified) or after != before)
