"""fp16 linears -> our Linear family (runtime/custom_ops: on CUDA one GEMV kernel for 1-4 rows, the
decode steps; our norm kernel, cuBLAS and our SwiGLU kernel for more rows):

    MatMul(x, W), W a constant (K, N)            -> Linear(x, W^T)              the weight stored (N, K)
    MatMulNBits(x, B, s[, z]), 4-bit             -> LinearInt4(x, B, s[, z])    the same arrays, read as they are
    SwiGLU(Linear(x, W))                         -> LinearSwiGLU(x, W^T)        (gate rows, then up rows)
    Linear(SkipSimplifiedLayerNormalization(x, skip, gamma)[0], W)
                                                 -> NormLinear(x, skip, gamma, W^T)  (and the norm's sum)
    both                                         -> NormLinearSwiGLU(x, skip, gamma, W^T)

and the same folds of LinearInt4 (LinearInt4SwiGLU, NormLinearInt4[SwiGLU]), then (`chain`)

    NormLinearInt4[SwiGLU](LinearInt4(x, Wa), skip, gamma, W)
                                                 -> LinearInt4NormLinearInt4[SwiGLU](x, Wa, skip, gamma, W)

a Llama layer's o projection with the norm and gate/up after it, and its down projection with the
next layer's norm and q/k/v: one op, whose CUDA kernels leave the first GEMM's K parts (at batch)
for the norm's kernel to add up instead of a conversion kernel of their own (run33, an H100, the 1B
shape at 64 rows: 143 kernels a step against 174, model replay 1.866 against 1.908 ms). A 4-bit MatMulNBits
takes when its block is a multiple of 32 and it has no g_idx, bias or Hopper-prepacked layout,
its zero points (if any) packed uint8; its accuracy_level does not apply (fp32 sums). The
LinearInt4 CUDA kernels ran in an int4 engine on an H200 (run15: build verified on the CPU kernels,
1.27x genai's int4 graph at batch 1); tests/test_custom_ops_int4.py, which checks them against the
CPU kernels, has not yet run on a GPU.

The registry's `custom-linear` lowers and folds the SwiGLU; `custom-linear-norm` folds the norms,
a pass of its own (run13, the 1B shape at batch 1: 853.0 tok/s with it, 850.9 without, captured).
At batch-1 decode a Llama layer's eight kernels for its norms, projections and activation become
four GEMVs (and each of them is a kernel launch fewer in the captured step). A tied lm_head,
MatMul(x, Transpose(table)), takes the embedding table itself: the engine keeps one copy of it
on the GPU, where onnxruntime folded the Transpose into a second at load.

For fp16 engines on CUDA (the ops take float16), after fuse-swiglu, the q/k/v and gate/up packing
and the skip-norm fusion, and after slice-logits and kv-layout: they find the lm_head as a MatMul,
and the final norm then feeds the lm_head through their Slice / GatherElements, so it stays a
norm of its own (the logits of the positions asked for only). What does not match is left as it
was, with the reason in the pass's notes.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import onnx_ir.passes as ir_passes

from passes._match import CUSTOM_DOMAIN, MS_DOMAIN, Deferred, NoMatch, add_initializer, attr, is_deferred, \
    maybe_producer, only_consumer, replace_value
from passes.fuse_swiglu import DTYPES

SKIP_NORM = "SkipSimplifiedLayerNormalization"


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


def replace_node(graph: ir.Graph, old: list[ir.Node], op_type: str, inputs: list[ir.Value],
                 outputs: list[ir.Value | None], num_outputs: int, **attributes) -> ir.Node:
    """A node of our domain in place of `old` (in graph order), its first outputs taking over
    `outputs` (None: an output nothing outside read)."""
    node = ir.node(op_type, inputs, attributes, domain=CUSTOM_DOMAIN, num_outputs=num_outputs,
                   name=f"{old[-1].name}/{op_type}")
    graph.insert_before(old[-1], node)
    for new, value in zip(node.outputs, outputs):
        if value is not None:
            replace_value(graph, value, new)
    graph.remove(old, safe=True)
    return node


def lower(graph: ir.Graph, matmul: ir.Node, dtype: ir.DataType, made: dict[str, ir.Value]) -> bool:
    """MatMul -> Linear; whether it read a tied table. NoMatch where it does not take."""
    x, b = matmul.inputs
    if (x.dtype or dtype) != ir.DataType.FLOAT16:
        raise NoMatch(f"{matmul.name}: a {x.dtype} input")
    weight, is_table = weight_nk(graph, b, made)
    replace_node(graph, [matmul], "Linear", [x, weight], [matmul.outputs[0]], 1)
    return is_table


def lower_int4(graph: ir.Graph, node: ir.Node, dtype: ir.DataType) -> None:
    """A 4-bit MatMulNBits -> LinearInt4 over the same initializers; NoMatch where it does not take."""
    x = node.inputs[0]
    if (x.dtype or dtype) != ir.DataType.FLOAT16:
        raise NoMatch(f"{node.name}: a {x.dtype} input")
    bits, block = attr(node, "bits", 4), attr(node, "block_size", 0)
    if bits != 4:
        raise NoMatch(f"{node.name}: {bits}-bit weights (LinearInt4 takes 4)")
    if block % 32 or block <= 0:
        raise NoMatch(f"{node.name}: block {block}, not a multiple of 32")
    if attr(node, "weight_prepacked", 0):
        raise NoMatch(f"{node.name}: weights prepacked for onnxruntime's Hopper kernel")
    if any(v is not None for v in node.inputs[4:]):
        raise NoMatch(f"{node.name}: has g_idx or a bias")
    zeros = node.inputs[3] if len(node.inputs) > 3 else None
    if zeros is not None and zeros.dtype not in (None, ir.DataType.UINT8):
        raise NoMatch(f"{node.name}: {zeros.dtype} zero points, not packed uint8")
    weights = [node.inputs[1], node.inputs[2], *([zeros] if zeros is not None else [])]
    replace_node(graph, [node], "LinearInt4", [x, *weights], [node.outputs[0]], 2, block_size=block)


def kept_attributes(node: ir.Node) -> dict:
    return {name: a.value for name, a in node.attributes.items()}


def fold_swiglu(graph: ir.Graph, linear: ir.Node) -> ir.Node | None:
    """Linear[Int4] -> SwiGLU becomes Linear[Int4]SwiGLU; None where no SwiGLU reads it, NoMatch
    where more does."""
    if not any(use.node.op_type == "SwiGLU" for use in linear.outputs[0].uses()):
        return None
    swiglu = only_consumer(linear.outputs[0], "SwiGLU", CUSTOM_DOMAIN)
    return replace_node(graph, [linear, swiglu], linear.op_type + "SwiGLU", list(linear.inputs), [swiglu.outputs[0]],
                        2, **kept_attributes(linear))


def fold_norm(graph: ir.Graph, linear: ir.Node) -> ir.Node | None:
    """SkipSimplifiedLayerNormalization -> one of our linears becomes its Norm form (the norm's
    sum an output of it); None where no such norm feeds it, NoMatch where one does but cannot fold."""
    x, *weights = linear.inputs
    norm = maybe_producer(x, SKIP_NORM, MS_DOMAIN)
    if norm is None:
        return None
    if x is not norm.outputs[0] or len(x.uses()) != 1:
        raise NoMatch(f"{norm.name}: its normalized output feeds more than the projection")
    if len(norm.inputs) > 3 and norm.inputs[3] is not None:
        raise NoMatch(f"{norm.name}: has a bias")
    if any(v is not None and (v.uses() or v.is_graph_output()) for v in norm.outputs[1:3]):
        raise NoMatch(f"{norm.name}: its mean / inverse deviation are read")
    gamma = norm.inputs[2]
    if gamma.const_value is None or len(gamma.const_value.shape) != 1 or gamma.const_value.shape[0] % 8:
        raise NoMatch(f"{norm.name}: gamma is not a constant of a width in multiples of 8")
    total = norm.outputs[3] if len(norm.outputs) > 3 else None
    op_type = "Norm" + linear.op_type
    return replace_node(graph, [norm, linear], op_type, [norm.inputs[0], norm.inputs[1], gamma, *weights],
                        [linear.outputs[0], total], 3, epsilon=float(attr(norm, "epsilon", 1e-5)),
                        **kept_attributes(linear))


def fold_chain(graph: ir.Graph, linear: ir.Node) -> ir.Node | None:
    """LinearInt4 -> NormLinearInt4[SwiGLU] (as its x or its skip: the sum is the same) becomes
    LinearInt4NormLinearInt4[SwiGLU]; None where no LinearInt4 feeds the norm, NoMatch where one
    does but cannot fold."""
    x, skip, gamma, *weights = linear.inputs
    first = maybe_producer(x, "LinearInt4", CUSTOM_DOMAIN) or maybe_producer(skip, "LinearInt4", CUSTOM_DOMAIN)
    if first is None:
        return None
    h = first.outputs[0]
    if len(h.uses()) != 1 or h.is_graph_output():
        raise NoMatch(f"{first.name}: its output feeds more than the norm")
    if attr(first, "block_size") != attr(linear, "block_size"):
        raise NoMatch(f"{first.name}: blocks of {attr(first, 'block_size')}, the norm's linear's "
                      f"{attr(linear, 'block_size')}")
    other = skip if h is x else x
    codes, scales, *zeros = first.inputs[1:]
    inputs = [first.inputs[0], codes, scales, zeros[0] if zeros else None, other, gamma, *weights,
              *([None] if len(weights) == 2 else [])]
    return replace_node(graph, [first, linear], "LinearInt4" + linear.op_type, inputs,
                        [linear.outputs[0], linear.outputs[1]], 3, **kept_attributes(linear))


class CustomLinear(ir_passes.InPlacePass):
    def __init__(self, dtype: str, lower: bool = True, folds: tuple[str, ...] = ("swiglu",)) -> None:
        """`dtype`: the engine's compute dtype (PassContext.dtype); `lower`: MatMul -> Linear;
        `folds`: what to fold into the Linears ("swiglu", "norm", "chain")."""
        super().__init__()
        self.dtype = DTYPES[dtype]
        self.lower, self.folds = lower, folds
        self.notes: list[str] = []

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        graph = model.graph
        if self.dtype != ir.DataType.FLOAT16:
            self.notes.append(f"a {self.dtype} engine: the ops' kernels take float16")
            return ir_passes.PassResult(model, modified=False)
        made: dict[str, ir.Value] = {}
        tied, skipped, folded = 0, Counter(), Counter()
        for matmul in [n for n in graph if self.lower and n.op_type == "MatMul" and n.domain == ""]:
            try:
                tied += lower(graph, matmul, self.dtype, made)
                folded["MatMul -> Linear"] += 1
            except NoMatch as why:
                skipped[str(why).split(": ", 1)[-1]] += 1
        for node in [n for n in graph if self.lower and n.op_type == "MatMulNBits" and n.domain == MS_DOMAIN]:
            try:
                lower_int4(graph, node, self.dtype)
                folded["MatMulNBits -> LinearInt4"] += 1
            except NoMatch as why:
                skipped[str(why).split(": ", 1)[-1]] += 1
        for what, fold, op_types in (("SwiGLU", fold_swiglu, ("Linear", "LinearInt4")),
                                     ("norm", fold_norm, ("Linear", "LinearSwiGLU", "LinearInt4", "LinearInt4SwiGLU")),
                                     ("chain", fold_chain, ("NormLinearInt4", "NormLinearInt4SwiGLU"))):
            if what.lower() not in self.folds:
                continue
            for linear in [n for n in graph if n.op_type in op_types and n.domain == CUSTOM_DOMAIN]:
                try:
                    node = fold(graph, linear)
                    if node is not None:
                        folded[f"{what} + {linear.op_type} -> {node.op_type}"] += 1
                except NoMatch as why:
                    skipped[f"{what} not folded: {str(why).split(': ', 1)[-1]}"] += 1
        if folded:
            model.opset_imports[CUSTOM_DOMAIN] = 1
        self.notes += [f"{n} x {what}" for what, n in folded.items()]
        if tied:
            self.notes.append(f"{tied} x Linear reading a tied embedding table as it is")
        self.notes += [f"{n} x left: {why}" for why, n in skipped.items()]
        return ir_passes.PassResult(model, modified=bool(folded))
