"""Optional node outputs that nothing reads -> absent (empty names), as dead-code's last step.

onnxruntime allocates and fills every named output of a node. SkipSimplifiedLayerNormalization
has three optional ones: the mean and inverse standard deviation (which no engine reads) and
the residual sum (which the last layer's norm has no reader for). fuse-skip-rms-norm names them
all, since every value a rewrite rule inserts is named; this step leaves them absent, as
onnxruntime-genai's model builder writes them: 61 tensors fewer to write per SmolLM2 step, the
same numbers. It runs last (in the dead-code pass), because a later rewrite would name them
again.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes as ir_passes

# (domain, op type) -> the indices of its optional outputs (onnxruntime's contrib schemas)
OPTIONAL_OUTPUTS: dict[tuple[str, str], tuple[int, ...]] = {
    ("com.microsoft", "SkipSimplifiedLayerNormalization"): (1, 2, 3),  # mean, inv_std_var, input_skip_bias_sum
}


class DropUnreadOptionalOutputs(ir_passes.InPlacePass):
    def call(self, model: ir.Model) -> ir_passes.PassResult:
        dropped = 0
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            for index in OPTIONAL_OUTPUTS.get((node.domain, node.op_type), ()):
                value = node.outputs[index] if index < len(node.outputs) else None
                if value is not None and value.name and not value.uses() and not value.is_graph_output():
                    value.name = ""
                    dropped += 1
        return ir_passes.PassResult(model, modified=dropped > 0)
