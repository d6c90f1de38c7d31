"""RMSNorm -> ONNX RMSNormalization (opset 23; onnxruntime runs it with its RMSNorm kernel).

Matches the fp32 pattern `optimizer/blocks.rms_norm` writes (fp16 engines keep their Casts
around it, so the norm still computes in fp32):

    Mul(Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2), [-1]), eps)))), w)
        -> RMSNormalization(x, w, axis=-1, epsilon=eps, stash_type=1)

The standard op rather than onnxruntime's SimplifiedLayerNormalization (same kernel, but
registered in the default domain without an ONNX schema, so onnx.checker rejects it). The
pass raises the model's default opset import to 23 when it fuses anything; the other ops
the capture writes keep their semantics from opset 21 to 23.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern


class RmsNormFusion(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, epsilon, weight):
        mean_square = op.ReduceMean(op.Pow(x, 2.0), [-1], keepdims=1)
        inv_rms = op.Reciprocal(op.Sqrt(op.Add(mean_square, epsilon)))
        return op.Mul(op.Mul(x, inv_rms), weight)

    def check(self, context, x, epsilon, weight, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        eps = epsilon.const_value
        if eps is None or eps.numpy().size != 1:
            return result.fail("epsilon is not a scalar constant", epsilon)
        w = weight.const_value
        if w is None or w.numpy().ndim != 1:
            return result.fail("the norm weight is not a 1-D constant", weight)
        if w.dtype != ir.DataType.FLOAT:
            return result.fail("the norm weight is not fp32", weight)
        return result

    def rewrite(self, op, x, epsilon, weight, **_):
        return op.RMSNormalization(
            x, weight, axis=-1, epsilon=float(np.asarray(epsilon.const_value.numpy()).reshape(())),
            stash_type=1)


RULES = [RmsNormFusion.rule()]
RMS_NORM_OPSET = 23
