"""fp16 linears -> our Linear op: MatMul(x, W), W a constant (K, N), becomes
optimizer.ops::Linear(x, W^T) with the weight stored (N, K) (runtime/custom_ops: on CUDA our
GEMV kernel for 1-4 rows, the decode steps, and cuBLAS for more).

A tied lm_head, MatMul(x, Transpose(table)), takes the embedding table itself: the engine keeps
one copy of it on the GPU, where onnxruntime folded the Transpose into a second at load.

For fp16 engines on CUDA (the op takes float16), after the q/k/v and gate/up packing; before
slice-logits, which finds the lm_head as a Linear too. What does not match is left as it was,
with the reason in the pass's notes.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import onnx_ir.passes as ir_passes

from passes._match import CUSTOM_DOMAIN, Deferred, NoMatch, add_initializer, attr, is_deferred, maybe_producer, \
    replace_value
from passes.fuse_swiglu import DTYPES


def transposed(tensor: ir.TensorProtocol) -> np.ndarray:
    return np.ascontiguousarray(tensor.numpy().T)


def weight_nk(graph: ir.Graph, b: ir.Value, made: dict[str, ir.Value]) -> tuple[ir.Value, bool]:
    """The (N, K) float16 initializer holding MatMul's B transposed, and whether it is a tied
    table read as it is (else a new initializer, made once per weight); or NoMatch."""
    transpose = maybe_producer(b, "Transpose")
    if transpose is not None:  # the tied lm_head: B = table^T, the table is what Linear reads
        table = transpose.inputs[0]
        if list(attr(transpose, "perm", [1, 0])) != [1, 0] or table.const_value is None:
            raise NoMatch(f"{transpose.name}: not a constant 2-D table transposed")
        b = table
    elif b.const_value is None:
        raise NoMatch(f"{b.name}: the weight is not a constant")
    tensor = b.const_value
    if tensor.dtype != ir.DataType.FLOAT16 or len(tensor.shape) != 2:
        raise NoMatch(f"{b.name}: a {tensor.dtype} weight of rank {len(tensor.shape)}, not a float16 matrix")
    if transpose is not None:
        return b, True
    if b.name not in made:
        k, n = tensor.shape
        array = Deferred((n, k), np.dtype(np.float16), lambda: transposed(tensor)) if is_deferred(b) \
            else transposed(tensor)
        made[b.name] = add_initializer(graph, f"{b.name}.nk", array)
    return made[b.name], False


class CustomLinear(ir_passes.InPlacePass):
    def __init__(self, dtype: str) -> None:
        """`dtype`: the engine's compute dtype (PassContext.dtype)."""
        super().__init__()
        self.dtype = DTYPES[dtype]
        self.notes: list[str] = []

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        graph = model.graph
        if self.dtype != ir.DataType.FLOAT16:
            self.notes.append(f"a {self.dtype} engine: the op's kernels take float16")
            return ir_passes.PassResult(model, modified=False)
        made: dict[str, ir.Value] = {}
        lowered, tied, skipped = 0, 0, Counter()
        for matmul in [n for n in graph if n.op_type == "MatMul" and n.domain == ""]:
            x, b = matmul.inputs
            try:
                if (x.dtype or self.dtype) != ir.DataType.FLOAT16:
                    raise NoMatch(f"{matmul.name}: a {x.dtype} input")
                weight, is_table = weight_nk(graph, b, made)
            except NoMatch as why:
                skipped[str(why).split(": ", 1)[-1]] += 1
                continue
            tied += is_table
            linear = ir.node("Linear", [x, weight], domain=CUSTOM_DOMAIN, name=f"{matmul.name}/linear")
            graph.insert_before(matmul, linear)
            replace_value(graph, matmul.outputs[0], linear.outputs[0])
            graph.remove(matmul, safe=True)
            lowered += 1
        if lowered:
            model.opset_imports[CUSTOM_DOMAIN] = 1
            self.notes.append(f"{lowered} x MatMul -> Linear" + (f" ({tied} reading a tied embedding table)" if tied else ""))
        self.notes += [f"{n} x left: {why}" for why, n in skipped.items()]
        return ir_passes.PassResult(model, modified=lowered > 0)
