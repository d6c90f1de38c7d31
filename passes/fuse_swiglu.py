"""Packed gate/up -> our SwiGLU op: Split(gate_up) -> QuickGelu(gate, alpha=1) -> Mul(., up)
becomes optimizer.ops::SwiGLU(gate_up), one kernel instead of three (runtime/custom_ops: the
library onnxruntime then loads for the engine).

For fp16 engines on CUDA (the op's CUDA kernel takes float16), after pack-gate-up and
fuse-activation: the Split must cut the last axis into two equal halves, gate first, each
half read by that one activation / product. What does not match is left as it was, with the
reason in the pass's notes.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import onnx_ir.passes as ir_passes

from passes._match import CUSTOM_DOMAIN, MS_DOMAIN, NoMatch, attr, constant, only_consumer, replace_value


def match(split: ir.Node, engine_dtype: ir.DataType) -> tuple[ir.Node, ir.Node]:
    """(QuickGelu, Mul) of a Split into gate and up that SwiGLU computes, or NoMatch. Values the
    graph leaves untyped (a captured graph's, before shape inference) have the engine's dtype."""
    if len(split.outputs) != 2:
        raise NoMatch(f"{split.name}: {len(split.outputs)} outputs, not gate and up")
    gate, up = split.outputs
    x = split.inputs[0]
    dtype = x.dtype or gate.dtype or engine_dtype
    if dtype != ir.DataType.FLOAT16:
        raise NoMatch(f"{split.name}: {dtype} input; the op's kernels take float16")
    shape = x.shape if x.shape is not None else gate.shape
    axis = attr(split, "axis", 0)
    if axis != -1 and (shape is None or axis != len(shape) - 1):
        raise NoMatch(f"{split.name}: splits axis {axis}, not the last")
    if len(split.inputs) > 1 and split.inputs[1] is not None:
        sizes = constant(split.inputs[1])
        if sizes.shape != (2,) or sizes[0] != sizes[1]:
            raise NoMatch(f"{split.name}: halves of sizes {np.asarray(sizes).tolist()}, not equal")
    act = only_consumer(gate, "QuickGelu", MS_DOMAIN)
    if attr(act, "alpha", 1.0) != 1.0:
        raise NoMatch(f"{act.name}: alpha {attr(act, 'alpha')}, not SiLU's 1")
    mul = only_consumer(act.outputs[0], "Mul")
    if only_consumer(up, "Mul") is not mul:
        raise NoMatch(f"{split.name}: up does not feed the product of the activated gate")
    return act, mul


DTYPES = {"fp32": ir.DataType.FLOAT, "fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}


class FuseSwiGLU(ir_passes.InPlacePass):
    def __init__(self, dtype: str) -> None:
        """`dtype`: the engine's compute dtype (PassContext.dtype)."""
        super().__init__()
        self.dtype = DTYPES[dtype]
        self.notes: list[str] = []

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        graph = model.graph
        fused, skipped = 0, Counter()
        for split in [n for n in graph if n.op_type == "Split" and n.domain == ""]:
            try:
                act, mul = match(split, self.dtype)
            except NoMatch as why:
                skipped[str(why).split(": ", 1)[-1]] += 1
                continue
            swiglu = ir.node("SwiGLU", [split.inputs[0]], domain=CUSTOM_DOMAIN, name=f"{split.name}/swiglu")
            graph.insert_before(mul, swiglu)
            replace_value(graph, mul.outputs[0], swiglu.outputs[0])
            graph.remove([mul, act, split], safe=True)
            fused += 1
        if fused:
            model.opset_imports[CUSTOM_DOMAIN] = 1
            self.notes.append(f"{fused} x Split + QuickGelu + Mul -> SwiGLU")
        self.notes += [f"{n} x left: {why}" for why, n in skipped.items()]
        return ir_passes.PassResult(model, modified=fused > 0)
