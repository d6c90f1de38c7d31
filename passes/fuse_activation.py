"""SiLU written as Mul(x, Sigmoid(x)) -> com.microsoft QuickGelu(x, alpha=1), which computes
x * Sigmoid(alpha * x) in one pass over x (SwiGLU's gate in Llama, Qwen2, Mistral).

GELU needs no fusion: capture already writes it as ONNX Gelu (approximate="tanh" where the
model uses it), which onnxruntime runs as one kernel. fp32, fp16 and bf16 engines: the CUDA
kernel takes each; onnxruntime's CPU provider runs the half-precision ones through fp32.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern


FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


class SiluFusion(pattern.RewriteRuleClassBase):
    def pattern(self, op, x):
        return op.Mul(x, op.Sigmoid(x))

    def check(self, context, x, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.dtype is not None and x.dtype not in FLOATS:
            return result.fail(f"QuickGelu takes float inputs, not {x.dtype}", x)
        return result

    def rewrite(self, op, x, **_):
        return op.QuickGelu(x, alpha=1.0, _domain="com.microsoft")


RULES = [SiluFusion.rule()]
