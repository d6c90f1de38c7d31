"""fp16 / bf16 engines: RMS norms in the compute dtype, without the Casts around them.

Capture writes every norm of a half-precision engine in fp32, as transformers computes it:

    Cast(x, to=FLOAT) -> RMSNormalization(w: fp32) -> Cast(to=FLOAT16)

which on a GPU is three kernels (two of them Casts, 66 of the 69 Casts per step of a
Llama-3.2-1B engine) and an fp32 norm. After fuse-rms-norm this pass rewrites each to

    RMSNormalization(x, w: fp16, stash_type=1)

onnxruntime's norm kernels accumulate the statistics in fp32 (stash_type=1) whatever the
input type, so what changes is where the result is rounded: the product with the weight is
rounded to fp16 once, as transformers' `weight * hidden.to(dtype)` rounds it, and the weight
itself is stored in fp16 (as a half-precision checkpoint stores it). With the Casts gone, the
residual Add feeds the norm directly and fuse-skip-rms-norm fuses it as on fp32 engines.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

HALF = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


class NormCastFold(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, weight, to):
        wide = op.Cast(x, to=ir.DataType.FLOAT)
        normed = op.RMSNormalization(wide, weight, _allow_other_attributes=True, _outputs=["normed"])
        return op.Cast(normed, to=to)

    def check(self, context, x, weight, to, normed, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        half = ir.DataType(to.value)
        if half not in HALF:
            return result.fail("the norm's output is not cast to fp16 / bf16", normed)
        # capture leaves values untyped; where a type is known it must be the same half dtype
        if x.dtype is not None and x.dtype != half:
            return result.fail(f"the norm's input is {x.dtype}, its output is cast to {half}", x)
        if weight.const_value is None or weight.const_value.dtype != ir.DataType.FLOAT:
            return result.fail("the norm weight is not an fp32 constant", weight)
        if len(normed.uses()) != 1:
            return result.fail("the fp32 norm output has other consumers", normed)
        return result

    def rewrite(self, op, x, weight, to, normed, **_):
        node = normed.producer()
        half = ir.DataType(to.value)
        w = op.initializer(ir.tensor(weight.const_value.numpy().astype(half.numpy()),
                                     name=f"{weight.name}.{half.name.lower()}"))
        return op.RMSNormalization(x, w, axis=node.attributes.get_int("axis", -1),
                                   epsilon=node.attributes.get_float("epsilon", 1e-5), stash_type=1)


RULES = [NormCastFold.rule()]
