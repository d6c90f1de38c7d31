"""Run onnxscript pattern-rewrite rules as an onnx_ir pass (modified = some rule matched)."""

from __future__ import annotations

from typing import Sequence

import onnx_ir as ir
import onnx_ir.passes as ir_passes
from onnxscript.rewriter import pattern

from passes._match import ensure_ms_opset


class RulePass(ir_passes.InPlacePass):
    def __init__(self, rules: Sequence[pattern.RewriteRule], what: str, uses_ms_domain: bool = False,
                 min_opset: int | None = None) -> None:
        super().__init__()
        self.min_opset = min_opset
        self.rules = pattern.RewriteRuleSet(list(rules))
        self.what = what
        self.uses_ms_domain = uses_ms_domain
        self.notes: list[str] = []

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        count = self.rules.apply_to_model(model)
        if count:
            if self.uses_ms_domain:
                ensure_ms_opset(model)
            if self.min_opset and model.opset_imports.get("", 0) < self.min_opset:
                self.notes.append(f"default opset {model.opset_imports.get('', 0)} -> {self.min_opset}")
                model.opset_imports[""] = self.min_opset
            self.notes.append(f"{count} x {self.what}")
        return ir_passes.PassResult(model, modified=count > 0)
