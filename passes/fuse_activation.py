"""SiLU written as Mul(x, Sigmoid(x)) -> com.microsoft QuickGelu(x, alpha=1), which computes
x * Sigmoid(alpha * x) in one pass over x (SwiGLU's gate in Llama, Qwen2, Mistral).

GELU needs no fusion: capture already writes it as ONNX Gelu (approximate="tanh" where the
model uses it), which onnxruntime runs as one kernel. fp32 only: onnxruntime's CPU QuickGelu
kernel is float-only.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern


class SiluFusion(pattern.RewriteRuleClassBase):
    def __init__(self, engine_dtype: str) -> None:
        super().__init__()
        self.engine_dtype = engine_dtype

    def pattern(self, op, x):
        return op.Mul(x, op.Sigmoid(x))

    def check(self, context, x, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if self.engine_dtype != "fp32" or (x.dtype is not None and x.dtype != ir.DataType.FLOAT):
            return result.fail("QuickGelu runs on fp32 inputs only (CPU kernel)", x)
        return result

    def rewrite(self, op, x, **_):
        return op.QuickGelu(x, alpha=1.0, _domain="com.microsoft")


def rules(engine_dtype: str) -> list[pattern.RewriteRule]:
    return [SiluFusion.rule(engine_dtype=engine_dtype)]
