"""Pack sibling projections that read the same input into one MatMul / MatMulNBits / FP8 node.

    y_i = MatMul(x, W_i)                 -> Split(MatMul(x, Concat(W_i, axis=1)))
    y_i = MatMulNBits(x, B_i, s_i, z_i)  -> Split(MatMulNBits(x, Concat(B_i), Concat(s_i), Concat(z_i)))
    y_i = MatMulBlockQuantizedFp8Weight(x, B_i, s_i, a)
                                         -> Split(MatMulBlockQuantizedFp8Weight(x, Concat(B_i), Concat(s_i), a))
                                            (siblings sharing one activation scale a: q/k/v, gate/up)

One weight read and one kernel launch instead of three (q/k/v: `pack-qkv`) or two
(gate/up: `pack-gate-up`); the codes, scales and zero points are concatenated along N, so
the packed kernel computes exactly what the separate ones did. Bias Adds (Qwen2's q/k/v)
are packed too. When the q/k/v outputs feed a GroupQueryAttention's query/key/value, the
packed output goes straight in (GQA's packed-QKV input) and the Split disappears.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnx_ir.passes as ir_passes
from onnx_ir.passes import common

from passes._match import MS_DOMAIN, Deferred, add_initializer, attr, deferred_concat, is_deferred, replace_value
from passes.lower_quantized_matmul import FP8_WEIGHT_OP

I64 = np.int64
# the com.microsoft kinds: attributes that must agree, and the inputs concatenated along N
# (the rest are shared: they must be the same constant in every sibling)
_ATTRS = {"MatMulNBits": ("K", "bits", "block_size", "accuracy_level"), FP8_WEIGHT_OP: ("block_size",)}
_CONCATENATED = {"MatMulNBits": {1: ".qweight", 2: ".scales", 3: ".qzeros"},
                 FP8_WEIGHT_OP: {1: ".qweight", 2: ".scales"}}


@dataclass
class Sibling:
    node: ir.Node
    n: int  # output features
    bias: ir.Node | None  # Add(y, b) consuming the output, when every sibling has one
    out: ir.Value  # the value consumers read (after the bias Add when packed with it)


class PackSiblingMatMuls(ir_passes.InPlacePass):
    def __init__(self, count: int, label: str) -> None:
        super().__init__()
        self.count, self.label = count, label
        self.notes: list[str] = []

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        graph = model.graph
        order = {id(node): i for i, node in enumerate(graph)}
        groups = []
        seen: set[int] = set()
        for node in list(graph):
            x = node.inputs[0] if node.inputs else None
            if x is None or id(x) in seen or _kind(node) is None:
                continue
            seen.add(id(x))
            siblings = sorted((u.node for u in x.uses() if u.idx == 0 and _kind(u.node) is not None),
                              key=lambda n: order[id(n)])
            if len(siblings) == self.count and _compatible(siblings):
                groups.append(siblings)
        splits = [_pack(graph, nodes) for nodes in groups]
        packed_gqa = sum(_feed_packed_qkv(split) for split in splits)
        if groups:
            common.RemoveUnusedNodesPass()(model)  # the replaced nodes and their weights
            self.notes.append(f"{len(groups)} {self.label} groups packed"
                              + (f", {packed_gqa} feeding GroupQueryAttention's packed QKV input"
                                 if packed_gqa else ""))
        return ir_passes.PassResult(model, modified=bool(groups))


def _kind(node: ir.Node) -> str | None:
    if node.op_type == "MatMul" and node.domain == "" and _const(node.inputs[1], 2):
        return "MatMul"
    if (node.op_type in _ATTRS and node.domain == MS_DOMAIN and len(node.inputs) <= 4
            and all(_const(v) for v in node.inputs[1:] if v is not None)):
        return node.op_type
    return None


def _const(value: ir.Value | None, ndim: int | None = None) -> bool:
    return (value is not None and value.const_value is not None
            and (ndim is None or len(value.const_value.shape) == ndim))


def _compatible(nodes: list[ir.Node]) -> bool:
    kinds = {_kind(n) for n in nodes}
    if len(kinds) != 1:
        return False
    if kinds == {"MatMul"}:
        w = [n.inputs[1].const_value for n in nodes]
        return len({t.shape[0] for t in w}) == 1 and len({t.dtype for t in w}) == 1
    op = nodes[0].op_type
    keys = {tuple(attr(n, a, 0) for a in _ATTRS[op]) + (len(n.inputs), n.inputs[2].const_value.dtype)
            for n in nodes}
    shared = [i for i in range(1, len(nodes[0].inputs)) if i not in _CONCATENATED[op]]
    return len(keys) == 1 and all(_same_constant([n.inputs[i] for n in nodes]) for i in shared)


def _same_constant(values: list[ir.Value | None]) -> bool:
    if any(v is None for v in values):
        return all(v is None for v in values)
    arrays = [v.const_value.numpy() for v in values]
    return all(a.shape == arrays[0].shape and (a == arrays[0]).all() for a in arrays[1:])


def _width(node: ir.Node) -> int:
    if node.op_type == "MatMul":
        return node.inputs[1].const_value.shape[1]
    if node.op_type == FP8_WEIGHT_OP:
        return node.inputs[1].const_value.shape[0]  # B is (N, K)
    return attr(node, "N")


def _bias_of(node: ir.Node, n: int) -> ir.Node | None:
    users = [u.node for u in node.outputs[0].uses()]
    if len(users) == 1 and users[0].op_type == "Add" and users[0].domain == "":
        add = users[0]
        other = add.inputs[1] if add.inputs[0] is node.outputs[0] else add.inputs[0]
        if other.const_value is not None and other.const_value.shape == (n,):
            return add
    return None


def _pack(graph: ir.Graph, nodes: list[ir.Node]) -> ir.Node:
    """Insert the packed node (+ bias Add) and a Split whose outputs replace the siblings'."""
    siblings = [Sibling(n, _width(n), _bias_of(n, _width(n)), n.outputs[0]) for n in nodes]
    with_bias = all(s.bias is not None for s in siblings)
    names = [s.node.inputs[1].name.rsplit(".", 1)[0] for s in siblings]
    base = names[0].rsplit(".", 1)[0] + "." + "+".join(n.rsplit(".", 1)[-1] for n in names)
    first = nodes[0]
    if first.op_type == "MatMul":
        weight = _concat([s.node.inputs[1] for s in siblings], axis=1)
        packed = ir.node("MatMul", [first.inputs[0], add_initializer(graph, base + ".weight", weight)],
                         name=base)
    else:
        op = first.op_type
        inputs = [first.inputs[0]]
        for i in range(1, len(first.inputs)):
            suffix = _CONCATENATED[op].get(i)
            if suffix is None or first.inputs[i] is None:  # shared (checked equal) or absent
                inputs.append(first.inputs[i])
                continue
            inputs.append(add_initializer(graph, base + suffix, _concat([s.node.inputs[i] for s in siblings], axis=0)))
        attributes = {a: attr(first, a) for a in _ATTRS[op]}
        if op == "MatMulNBits":
            attributes["N"] = sum(s.n for s in siblings)
        packed = ir.node(op, inputs, attributes, domain=MS_DOMAIN, name=base)
    chain = [packed]
    if with_bias:
        bias = np.concatenate([_bias_array(s) for s in siblings])
        chain.append(ir.node("Add", [packed.outputs[0], add_initializer(graph, base + ".bias", bias)],
                             name=base + "/bias"))
        for s in siblings:
            s.out = s.bias.outputs[0]
    split = ir.node("Split", [chain[-1].outputs[0],
                              add_initializer(graph, base + ".split", np.asarray([s.n for s in siblings], I64))],
                    {"axis": -1}, num_outputs=len(siblings), name=base + "/split")
    chain.append(split)
    for n in chain[:-1]:
        n.outputs[0].name = n.name
    for i, out in enumerate(split.outputs):
        out.name = f"{split.name}:{i}"
    graph.insert_before(first, chain)
    for s, new in zip(siblings, split.outputs):
        replace_value(graph, s.out, new)
    return split


def _concat(values: list[ir.Value], axis: int) -> np.ndarray | Deferred:
    """The siblings' initializers side by side: now, or when written where they are deferred
    (a streaming build holds no weight in memory)."""
    if any(is_deferred(v) for v in values):
        return deferred_concat(values, axis)
    return np.concatenate([v.const_value.numpy() for v in values], axis=axis)


def _bias_array(s: Sibling) -> np.ndarray:
    add = s.bias
    other = add.inputs[1] if add.inputs[0] is s.node.outputs[0] else add.inputs[0]
    return other.const_value.numpy()


def _feed_packed_qkv(split: ir.Node) -> int:
    """Split(packed) -> GQA(q, k, v): feed GQA the packed tensor. Returns 1 if rewired."""
    users = [[(u.node, u.idx) for u in out.uses()] for out in split.outputs]
    if len(users) != 3 or any(len(u) != 1 for u in users):
        return 0
    (gqa, i0), (g1, i1), (g2, i2) = (u[0] for u in users)
    if gqa.op_type != "GroupQueryAttention" or not (gqa is g1 is g2) or (i0, i1, i2) != (0, 1, 2):
        return 0
    gqa.replace_input_with(0, split.inputs[0])
    gqa.replace_input_with(1, None)
    gqa.replace_input_with(2, None)
    return 1
