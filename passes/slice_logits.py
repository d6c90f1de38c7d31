"""Logits only where they are needed: the output projection reads positions [logits_from, S).

A prefill of S tokens needs the logits of its last position only, and a prefill chunk that
does not end the prompt needs none; computing all S rows of the (hidden x vocab) output
projection is a fifth of a small model's prefill work. This pass adds an int64 input
`logits_from` (shape [1]) and a Slice along the sequence axis in front of the lm_head
MatMul / MatMulNBits (or our Linear):

    logits = lm_head(normed[:, logits_from:, :])     (B, S - logits_from, V)

The runtime feeds S - 1 at prefill (S to skip the projection), 0 at decode and for
evaluation, which keeps every position's logits. Found from the graph output `logits`
backwards through the fp32 Cast and the final softcap (Gemma), if any.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes as ir_passes

from passes._match import CUSTOM_DOMAIN, MS_DOMAIN, NoMatch, add_initializer

INPUT = "logits_from"
_PASS_THROUGH = {"Cast", "Mul", "Tanh", "Div"}  # between the projection and the output
_PROJECTIONS = {("MatMul", ""), ("MatMulNBits", MS_DOMAIN), ("Linear", CUSTOM_DOMAIN)}  # custom-linear's op


class SliceLogits(ir_passes.InPlacePass):
    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        graph = model.graph
        if any(v.name == INPUT for v in graph.inputs):
            self.notes.append(f"the graph already takes {INPUT}")
            return ir_passes.PassResult(model, modified=False)
        try:
            head = _lm_head(graph)
        except NoMatch as e:
            self.notes.append(f"lm_head not found: {e}")
            return ir_passes.PassResult(model, modified=False)
        start = ir.Value(name=INPUT, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([1]))
        graph.inputs.append(start)
        end = add_initializer(graph, "logits_slice.end", np.asarray([np.iinfo(np.int64).max], np.int64))
        axis = add_initializer(graph, "logits_slice.axis", np.asarray([1], np.int64))
        hidden = head.inputs[0]
        sliced = ir.node("Slice", [hidden, start, end, axis], name="logits_slice")
        sliced.outputs[0].name = "logits_slice:out"
        sliced.outputs[0].type = hidden.type
        graph.insert_before(head, sliced)
        head.replace_input_with(0, sliced.outputs[0])
        self.notes.append(f"{head.op_type} {head.name} computes positions [{INPUT}, S) only")
        return ir_passes.PassResult(model, modified=True)


def _lm_head(graph: ir.Graph) -> ir.Node:
    out = next((v for v in graph.outputs if v.name == "logits"), None)
    if out is None:
        raise NoMatch("the graph has no 'logits' output")
    node = out.producer()
    while node is not None and node.op_type in _PASS_THROUGH and node.domain == "":
        node = node.inputs[0].producer()
    if node is None or (node.op_type, node.domain) not in _PROJECTIONS:
        raise NoMatch(f"expected MatMul/MatMulNBits/Linear before 'logits', found {node.op_type if node else 'an input'}")
    return node
