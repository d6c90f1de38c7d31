"""Greedy tokens from the engine itself: an output `greedy_tokens`, the argmax of `logits`.

A decode step that samples greedily needs only token ids. With the engine computing them, a
captured decode step on CUDA is one replay whose only copy back to the host is b ids, not a
replay of the model and then one of a separate sampler graph reading its logits (each run
through onnxruntime costs tens of microseconds of host time on a step of about a
millisecond). `logits` stays an output for sampling and evaluation. ArgMax returns the first
maximum, as numpy's argmax does.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes as ir_passes

OUTPUT = "greedy_tokens"


class GreedyTokens(ir_passes.InPlacePass):
    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        graph = model.graph
        if any(v.name == OUTPUT for v in graph.outputs):
            self.notes.append(f"the graph already outputs {OUTPUT}")
            return ir_passes.PassResult(model, modified=False)
        logits = next((v for v in graph.outputs if v.name == "logits"), None)
        if logits is None:
            self.notes.append("the graph has no 'logits' output")
            return ir_passes.PassResult(model, modified=False)
        node = ir.node("ArgMax", [logits], {"axis": -1, "keepdims": 0}, name="greedy_tokens/argmax")
        out = node.outputs[0]
        out.name = OUTPUT
        out.type = ir.TensorType(ir.DataType.INT64)
        if logits.shape is not None:
            out.shape = ir.Shape(list(logits.shape)[:-1])
        graph.append(node)
        graph.outputs.append(out)
        self.notes.append(f"{OUTPUT} = ArgMax(logits, axis=-1): (batch, rows) int64")
        return ir_passes.PassResult(model, modified=True)
