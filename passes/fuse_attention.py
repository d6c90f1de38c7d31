"""Attention subgraph (with its rotary embedding) -> com.microsoft GroupQueryAttention.

Matches, per layer, the pattern `optimizer/blocks.attention` writes (anchored at its Softmax):

    q  = Transpose(Reshape(q_in, [0,0,nKV,R,hd]), [0,2,3,1,4])  [-> RMSNormalization]     
    k  = Transpose(Reshape(k_in, [0,0,nKV,hd]), [0,2,1,3])       [-> RMSNormalization]     
    v  = Transpose(Reshape(v_in, [0,0,nKV,hd]), [0,2,1,3])
    q, k = rotary(q, cos, sin), rotary(k, cos, sin)       (Split Neg Concat Mul Mul Add)
    present_k, present_v = Concat(past_k, k), Concat(past_v, v)
    s = MatMul(Mul(q, scale), Unsqueeze(Transpose(present_k)))  [Cast] [softcap: Mul(Tanh(Div))]
    out = Reshape(Transpose(MatMul([Cast] Softmax(Where(mask, s, min)), Unsqueeze(present_v))))

and replaces it with one node:

    GroupQueryAttention(q_in, k_in, v_in, past_k, past_v, seqlens_k, total_sequence_length,
                        cos_cache, sin_cache)  do_rotary=1, scale, softcap, local_window_size

The rotary tables become (max_positions, hd/2) caches computed from the graph's inv_freq
constant (and attention scaling); the mask becomes GQA's own causal / sliding-window mask
(local_window_size = W reproduces transformers' window of W, q - j < W: checked against the
unfused graph and transformers in the tests).
QK-norm (Gemma3) stays an RMSNormalization on a (B, S, heads, hd) view, before
GQA's rotary, as in the model. Requires fuse-rms-norm first on QK-norm models.

Contract change, recorded in the manifest (`kv_cache.padding`): GQA reads each row's length
as sum(attention_mask) and keeps a row's tokens at the start of its cache, so batched inputs
are right-padded; rotary positions are the cache positions (position_ids is not read).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnx_ir.passes as ir_passes
from onnx_ir.passes import common

from passes._match import (MS_DOMAIN, NoMatch, add_initializer, attr, constant, ensure_ms_opset,
                           expect_const, maybe_only_consumer, maybe_producer, only_consumer, producer,
                           replace_value, skip_cast)

I64 = np.int64


@dataclass
class Norm:
    weight: ir.Value
    epsilon: float


@dataclass
class AttentionMatch:
    q_in: ir.Value
    k_in: ir.Value
    v_in: ir.Value
    q_norm: Norm | None
    k_norm: Norm | None
    past_k: ir.Value
    past_v: ir.Value
    present_k: ir.Value
    present_v: ir.Value
    out: ir.Value
    last_node: ir.Node  # the final Reshape: the fused nodes go before it
    num_heads: int
    kv_heads: int
    head_dim: int
    scale: float
    softcap: float
    window: int | None
    inv_freq: np.ndarray
    rope_scaling: float


class FuseAttention(ir_passes.InPlacePass):
    def __init__(self, max_positions: int) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.notes: list[str] = []

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        graph = model.graph
        matches = []
        for node in list(graph):
            if node.op_type == "Softmax" and node.domain == "":
                try:
                    matches.append(match_attention(node))
                except NoMatch as e:
                    self.notes.append(f"{node.name}: not fused: {e}")
        if not matches:
            return ir_passes.PassResult(model, modified=False)
        seqlens_k, total_length = _sequence_lengths(graph)
        caches: dict[tuple[bytes, float, ir.DataType], tuple[ir.Value, ir.Value]] = {}
        for m in matches:
            dtype = m.past_k.dtype
            key = (m.inv_freq.tobytes(), m.rope_scaling, dtype)
            if key not in caches:
                caches[key] = self._rotary_caches(graph, m, dtype, len(caches))
            _rewrite(graph, m, seqlens_k, total_length, *caches[key])
        ensure_ms_opset(model)
        common.RemoveUnusedNodesPass()(model)
        self.notes.append(f"{len(matches)} attention blocks -> GroupQueryAttention "
                          f"(rotary in GQA, cos/sin caches for {self.max_positions} positions)")
        return ir_passes.PassResult(model, modified=True)

    def _rotary_caches(self, graph: ir.Graph, m: AttentionMatch, dtype: ir.DataType,
                       index: int) -> tuple[ir.Value, ir.Value]:
        cos, sin = rotary_caches(m.inv_freq, m.rope_scaling, self.max_positions)
        np_dtype = dtype.numpy()
        return (add_initializer(graph, f"rotary.{index}.cos_cache", cos.astype(np_dtype)),
                add_initializer(graph, f"rotary.{index}.sin_cache", sin.astype(np_dtype)))


def rotary_caches(inv_freq: np.ndarray, scaling: float, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (max_positions, hd/2) in fp32: the angles computed in fp32 as transformers does."""
    freqs = np.arange(max_positions, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    return (np.cos(freqs) * np.float32(scaling)).astype(np.float32), \
        (np.sin(freqs) * np.float32(scaling)).astype(np.float32)


def match_attention(softmax: ir.Node) -> AttentionMatch:
    if attr(softmax, "axis", -1) != -1:
        raise NoMatch("Softmax is not over the last axis")
    where = producer(softmax.inputs[0], "Where")
    mask, scores = where.inputs[0], where.inputs[1]
    if constant(where.inputs[2]).max() > -1e30:
        raise NoMatch("masked scores are not filled with the dtype minimum")
    softcap = 0.0
    if (mul := maybe_producer(scores, "Mul")) is not None and maybe_producer(mul.inputs[0], "Tanh"):
        softcap = float(constant(mul.inputs[1]))
        div = producer(producer(mul.inputs[0], "Tanh").inputs[0], "Div")
        if float(constant(div.inputs[1])) != softcap:
            raise NoMatch("softcap Div and Mul use different caps")
        scores = div.inputs[0]
    qk = producer(skip_cast(scores), "MatMul")
    scale_mul = producer(qk.inputs[0], "Mul")
    scale = float(constant(scale_mul.inputs[1]))

    k_t = producer(qk.inputs[1], "Unsqueeze")
    expect_const(k_t.inputs[1], [2], "key Unsqueeze axes")
    k_transpose = producer(k_t.inputs[0], "Transpose")
    if list(attr(k_transpose, "perm")) != [0, 1, 3, 2]:
        raise NoMatch("key transpose is not [0, 1, 3, 2]")
    past_k, k_rot, present_k = _cache_concat(k_transpose.inputs[0])

    q_pre, q_cos = _match_rotary(scale_mul.inputs[0])
    k_pre, k_cos = _match_rotary(k_rot)
    q_cos_src = producer(q_cos, "Unsqueeze")
    if q_cos_src.inputs[0] is not k_cos:
        raise NoMatch("query and key rotary use different tables")
    inv_freq, rope_scaling = _rope_source(k_cos)

    q5, q_norm = _strip_norm(q_pre)
    k4, k_norm = _strip_norm(k_pre)
    q_in, (_, _, kv_heads, rep, head_dim) = _heads_view(q5, [0, 2, 3, 1, 4], 5)
    k_in, _ = _heads_view(k4, [0, 2, 1, 3], 4)

    probs = softmax.outputs[0]
    if (cast := maybe_only_consumer(probs, "Cast")) is not None:
        probs = cast.outputs[0]
    pv = only_consumer(probs, "MatMul")
    v_unsq = producer(pv.inputs[1], "Unsqueeze")
    expect_const(v_unsq.inputs[1], [2], "value Unsqueeze axes")
    past_v, v4, present_v = _cache_concat(v_unsq.inputs[0])
    v_in, _ = _heads_view(v4, [0, 2, 1, 3], 4)
    out_t = only_consumer(pv.outputs[0], "Transpose")
    if list(attr(out_t, "perm")) != [0, 3, 1, 2, 4]:
        raise NoMatch("output transpose is not [0, 3, 1, 2, 4]")
    out_r = only_consumer(out_t.outputs[0], "Reshape")
    num_heads = int(kv_heads * rep)
    expect_const(out_r.inputs[1], [0, 0, num_heads * head_dim], "output reshape")
    return AttentionMatch(q_in=q_in, k_in=k_in, v_in=v_in, q_norm=q_norm, k_norm=k_norm,
                          past_k=past_k, past_v=past_v, present_k=present_k, present_v=present_v,
                          out=out_r.outputs[0], last_node=out_r, num_heads=num_heads,
                          kv_heads=int(kv_heads), head_dim=int(head_dim), scale=scale, softcap=softcap,
                          window=_window(mask), inv_freq=inv_freq, rope_scaling=rope_scaling)


def _cache_concat(present: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """present = Concat(past, new, axis=2) with past a graph input: (past, new, present)."""
    concat = producer(present, "Concat")
    if attr(concat, "axis") != 2 or len(concat.inputs) != 2:
        raise NoMatch("KV cache is not a Concat(past, new) on axis 2")
    past, new = concat.inputs
    if not past.is_graph_input():
        raise NoMatch(f"past cache {past.name} is not a graph input")
    return past, new, present


def _match_rotary(value: ir.Value) -> tuple[ir.Value, ir.Value]:
    """x*cos + Concat(-x2, x1)*sin -> (x, cos)."""
    add = producer(value, "Add")
    m1, m2 = (producer(v, "Mul") for v in add.inputs)
    x, cos = m1.inputs
    rotated, sin = m2.inputs
    concat = producer(rotated, "Concat")
    neg = producer(concat.inputs[0], "Neg")
    split = producer(neg.inputs[0], "Split")
    if split.inputs[0] is not x or concat.inputs[1] is not split.outputs[0] or neg.inputs[0] is not split.outputs[1]:
        raise NoMatch("rotate_half does not split and rotate the rotated tensor")
    if attr(split, "axis") != -1 or attr(concat, "axis") != -1:
        raise NoMatch("rotate_half is not over the last axis")
    cos_fn = producer(_table_source(cos), "Cos")
    sin_fn = producer(_table_source(sin), "Sin")
    if cos_fn.inputs[0] is not sin_fn.inputs[0]:
        raise NoMatch("cos and sin tables come from different angles")
    return x, cos


def _table_source(value: ir.Value) -> ir.Value:
    """Unsqueeze [Unsqueeze] [Cast] [Mul(scaling)] -> the Cos/Sin output."""
    while (node := maybe_producer(value, "Unsqueeze")) is not None:
        value = node.inputs[0]
    value = skip_cast(value)
    if (mul := maybe_producer(value, "Mul")) is not None:
        value = mul.inputs[0]
    return value


def _rope_source(cos: ir.Value) -> tuple[np.ndarray, float]:
    """inv_freq and attention scaling of a table written by blocks.rotary_tables."""
    value = skip_cast(producer(cos, "Unsqueeze").inputs[0])
    scaling = 1.0
    if (mul := maybe_producer(value, "Mul")) is not None:
        scaling = float(constant(mul.inputs[1]))
        value = mul.inputs[0]
    emb = producer(producer(value, "Cos").inputs[0], "Concat")
    if emb.inputs[0] is not emb.inputs[1]:
        raise NoMatch("rotary angles are not [freqs, freqs]")
    freqs = producer(emb.inputs[0], "Mul")
    return constant(freqs.inputs[1]).astype(np.float32).reshape(-1), scaling


def _strip_norm(value: ir.Value) -> tuple[ir.Value, Norm | None]:
    """[Cast] RMSNormalization [Cast] -> (its input, the norm), or (value, None)."""
    norm = maybe_producer(skip_cast(value), "RMSNormalization")
    if norm is None:
        if maybe_producer(value, "Mul") is not None:
            raise NoMatch("QK-norm is not fused: run fuse-rms-norm before fuse-attention")
        return value, None
    if attr(norm, "axis", -1) != -1:
        raise NoMatch("QK-norm is not over the head dimension")
    return skip_cast(norm.inputs[0]), Norm(norm.inputs[1], float(attr(norm, "epsilon", 1e-5)))


def _heads_view(value: ir.Value, perm: list[int], rank: int) -> tuple[ir.Value, list[int]]:
    """Transpose(Reshape(x, [0, 0, heads..., hd]), perm) -> (x, reshape target)."""
    transpose = producer(value, "Transpose")
    if list(attr(transpose, "perm")) != perm:
        raise NoMatch(f"head transpose is {list(attr(transpose, 'perm'))}, expected {perm}")
    reshape = producer(transpose.inputs[0], "Reshape")
    shape = constant(reshape.inputs[1]).tolist()
    if len(shape) != rank or shape[:2] != [0, 0] or min(shape[2:]) <= 0:
        raise NoMatch(f"head reshape {shape} is not [0, 0, heads..., head_dim]")
    return reshape.inputs[0], shape


def _window(mask: ir.Value) -> int | None:
    """The sliding window of a mask from blocks.attention_masks: And(base, Less(q - j, W))."""
    node = producer(mask, "And")
    for value in node.inputs:
        if (less := maybe_producer(value, "Less")) is not None:
            return int(constant(less.inputs[1]))
    return None


def _sequence_lengths(graph: ir.Graph) -> tuple[ir.Value, ir.Value]:
    """seqlens_k = sum(attention_mask) - 1 (int32, per row) and the total length T (int32 scalar)."""
    mask = next((v for v in graph.inputs if v.name == "attention_mask"), None)
    if mask is None:
        raise NoMatch("the graph has no attention_mask input")
    one = add_initializer(graph, "gqa.one", np.asarray(1, I64))
    axis1 = add_initializer(graph, "gqa.axis1", np.asarray([1], I64))
    axis0 = add_initializer(graph, "gqa.axis0", np.asarray([0], I64))
    nodes = [ir.node("ReduceSum", [mask, axis1], {"keepdims": 0}, name="gqa/row_lengths")]
    nodes.append(ir.node("Sub", [nodes[-1].outputs[0], one], name="gqa/last_index"))
    nodes.append(ir.node("Cast", [nodes[-1].outputs[0]], {"to": ir.DataType.INT32}, name="gqa/seqlens_k"))
    seqlens_k = nodes[-1].outputs[0]
    nodes.append(ir.node("Shape", [mask], {"start": 1, "end": 2}, name="gqa/total_shape"))
    nodes.append(ir.node("Squeeze", [nodes[-1].outputs[0], axis0], name="gqa/total"))
    nodes.append(ir.node("Cast", [nodes[-1].outputs[0]], {"to": ir.DataType.INT32}, name="gqa/total_sequence_length"))
    total = nodes[-1].outputs[0]
    for n in nodes:
        n.outputs[0].name = n.name
    graph.insert_before(next(iter(graph)), nodes)
    return seqlens_k, total


def _rewrite(graph: ir.Graph, m: AttentionMatch, seqlens_k: ir.Value, total: ir.Value,
             cos_cache: ir.Value, sin_cache: ir.Value) -> None:
    prefix = m.last_node.name.rsplit("/", 1)[0] + "/gqa"
    new_nodes: list[ir.Node] = []
    q = _normed(graph, new_nodes, m.q_in, m.q_norm, m.num_heads, m.head_dim, m.past_k.dtype,
                prefix + "/q_norm")
    k = _normed(graph, new_nodes, m.k_in, m.k_norm, m.kv_heads, m.head_dim, m.past_k.dtype,
                prefix + "/k_norm")
    gqa = ir.node("GroupQueryAttention",
                  [q, k, m.v_in, m.past_k, m.past_v, seqlens_k, total, cos_cache, sin_cache],
                  {"num_heads": m.num_heads, "kv_num_heads": m.kv_heads, "scale": m.scale,
                   "do_rotary": 1, "rotary_interleaved": 0, "softcap": m.softcap,
                   "local_window_size": -1 if m.window is None else m.window},
                  domain=MS_DOMAIN, num_outputs=3, name=prefix)
    gqa.outputs[0].name = prefix + ":out"
    gqa.outputs[0].type = m.out.type
    new_nodes.append(gqa)
    graph.insert_before(m.last_node, new_nodes)
    replace_value(graph, m.out, gqa.outputs[0])
    replace_value(graph, m.present_k, gqa.outputs[1])
    replace_value(graph, m.present_v, gqa.outputs[2])


def _normed(graph: ir.Graph, nodes: list[ir.Node], x: ir.Value, norm: Norm | None, heads: int,
            head_dim: int, dtype: ir.DataType, name: str) -> ir.Value:
    """x (B, S, heads*hd), with the per-head RMS norm applied on a (B, S, heads, hd) view
    (in fp32 between Casts where the norm's weight is fp32, as the unfused norm; in the
    compute dtype where fold-norm-casts gave it a half-precision weight)."""
    if norm is None:
        return x
    heads_shape = add_initializer(graph, name + ".heads_shape", np.asarray([0, 0, heads, head_dim], I64))
    flat_shape = add_initializer(graph, name + ".flat_shape", np.asarray([0, 0, heads * head_dim], I64))
    chain = [ir.node("Reshape", [x, heads_shape], name=name + "/view")]
    wide = dtype != ir.DataType.FLOAT and norm.weight.dtype == ir.DataType.FLOAT  # else fold-norm-casts ran
    if wide:
        chain.append(ir.node("Cast", [chain[-1].outputs[0]], {"to": ir.DataType.FLOAT}, name=name + "/to_f32"))
    chain.append(ir.node("RMSNormalization", [chain[-1].outputs[0], norm.weight],
                         {"axis": -1, "epsilon": norm.epsilon, "stash_type": 1}, name=name))
    if wide:
        chain.append(ir.node("Cast", [chain[-1].outputs[0]], {"to": dtype}, name=name + "/to_compute"))
    chain.append(ir.node("Reshape", [chain[-1].outputs[0], flat_shape], name=name + "/flat"))
    for n in chain:
        n.outputs[0].name = n.name
    nodes += chain
    return chain[-1].outputs[0]
