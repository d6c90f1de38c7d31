"""Residual Add + RMSNormalization -> com.microsoft SkipSimplifiedLayerNormalization.

After fuse-rms-norm every pre-norm layer has

    s = Add(residual, h);  y = RMSNormalization(s, w)     (s also feeds the next Add)
        -> y, _, _, s = SkipSimplifiedLayerNormalization(residual, h, w, epsilon)

one kernel that adds, keeps the sum for the residual stream and normalizes. On fp16 / bf16
engines it matches once fold-norm-casts has put the norms in the compute dtype (the weight
then has the input's dtype, as the kernel requires).
"""

from __future__ import annotations

from onnxscript.rewriter import pattern


class SkipRmsNormFusion(pattern.RewriteRuleClassBase):
    def pattern(self, op, residual, h, weight):
        total = op.Add(residual, h)
        normed = op.RMSNormalization(total, weight, axis=-1, _allow_other_attributes=True,
                                                 _outputs=["normed"])
        return normed, total

    def check(self, context, residual, h, weight, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if weight.const_value is None:
            return result.fail("the norm weight is not a constant", weight)
        if residual.dtype is not None and weight.const_value.dtype != residual.dtype:
            return result.fail("the norm weight's dtype is not the residual stream's", weight)
        return result

    def rewrite(self, op, residual, h, weight, normed, **_):
        epsilon = normed.producer().attributes.get_float("epsilon", 1e-5)
        normed, _, _, total = op.SkipSimplifiedLayerNormalization(
            residual, h, weight, epsilon=epsilon, _domain="com.microsoft", _outputs=4)
        return normed, total


RULES = [SkipRmsNormFusion.rule()]
