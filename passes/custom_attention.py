"""Static-layout GroupQueryAttention -> our CachedAttention (runtime/custom_ops: on CUDA one kernel a
layer for rotary, the cache writes and attention, where onnxruntime's GQA launches four at decode):

    GroupQueryAttention(q, k, v, past_k, past_v, seqlens_k, total_sequence_length, cos, sin)
        -> CachedAttention(q, past_k, past_v, seqlens_k, total_sequence_length, cos, sin[, k, v])

with the same outputs (output, present_key, present_value: the cache written in place where the
runtime binds present to past, as the static layout does; else a new one of max(past,
total_sequence_length) positions, as build verification runs it) and attributes (num_heads,
kv_num_heads, scale, softcap, local_window_size). The op computes what GQA does for the calls the
runtime makes (decode rows of any lengths, chunks with a past, right-padded first prefills), and
more: several rows of several new tokens in one call.

Takes an fp16 node with do_rotary = 1, the half-split rotary over the whole head, a head size the
CUDA kernel is compiled for (HEAD_SIZES), and no quantized cache, extra inputs or outputs;
for the static layout only (the paged one is PagedAttention's). What does not match stays GQA,
with the reason in the pass's notes. The CUDA kernel equals the CPU one, eager and captured, on an
H200 (tests/test_custom_ops_attention.py; benchmarks/results/gpu-decode/run15-table.txt).
"""

from __future__ import annotations

from collections import Counter

import onnx_ir as ir
import onnx_ir.passes as ir_passes

from passes._match import CUSTOM_DOMAIN, MS_DOMAIN, NoMatch, attr
from passes.custom_linear import replace_node
from passes.fuse_swiglu import DTYPES
from passes.kv_layout import METADATA_KEY as LAYOUT_KEY

OP = "CachedAttention"
HEAD_SIZES = (16, 32, 64, 80, 96, 128, 256)  # those with a CUDA kernel (attention.cu's HeadSizes)
GQA_INPUTS = 9  # query, key, value, past_key, past_value, seqlens_k, total_sequence_length, cos, sin


def gqa_inputs(node: ir.Node) -> list[ir.Value | None]:
    """The node's first GQA_INPUTS inputs, None for those it lacks."""
    return [*node.inputs, *[None] * GQA_INPUTS][:GQA_INPUTS]


def check(node: ir.Node) -> tuple[int, int]:
    """(num_heads, kv_num_heads) of a GQA node our op can take; NoMatch saying why not."""
    query, key, value, past_k, past_v, seqlens, total, cos, sin = gqa_inputs(node)
    if len(node.inputs) > GQA_INPUTS and any(v is not None for v in node.inputs[GQA_INPUTS:]):
        raise NoMatch(f"{node.name}: has inputs past the rotary caches (position ids, a bias, a sink or cache scales)")
    if any(o is not None and (o.uses() or o.is_graph_output()) for o in node.outputs[3:]):
        raise NoMatch(f"{node.name}: its attention scores are read")
    if attr(node, "do_rotary", 0) != 1 or attr(node, "rotary_interleaved", 0) != 0:
        raise NoMatch(f"{node.name}: not its own half-split rotary (do_rotary 1, rotary_interleaved 0)")
    if attr(node, "smooth_softmax", 0) or attr(node, "qk_output", 0):
        raise NoMatch(f"{node.name}: smooth softmax or score outputs")
    if any(v is None or v.dtype not in (None, ir.DataType.FLOAT16) for v in (query, past_k, past_v, cos, sin)):
        raise NoMatch(f"{node.name}: not a float16 query, cache and rotary tables")
    if (key is None) != (value is None):
        raise NoMatch(f"{node.name}: key without value or value without key")
    if any(v is None or v.dtype not in (None, ir.DataType.INT32) for v in (seqlens, total)):
        raise NoMatch(f"{node.name}: no int32 seqlens_k and total_sequence_length")
    head_dim = past_k.shape[3] if past_k.shape is not None and len(past_k.shape) == 4 else None
    if not isinstance(head_dim, int):
        raise NoMatch(f"{node.name}: the cache's head size is not known")
    if head_dim not in HEAD_SIZES:
        raise NoMatch(f"{node.name}: head size {head_dim}, none of {', '.join(map(str, HEAD_SIZES))} (the CUDA "
                      "kernel's)")
    table = cos.const_value
    if table is None or len(table.shape) != 2 or table.shape[1] * 2 != head_dim:
        raise NoMatch(f"{node.name}: the rotary tables do not cover the whole head (partial rotary)")
    heads, kv_heads = attr(node, "num_heads", 0), attr(node, "kv_num_heads", 0)
    if kv_heads <= 0 or heads % kv_heads:
        raise NoMatch(f"{node.name}: num_heads {heads} not a multiple of kv_num_heads {kv_heads}")
    return heads, kv_heads


def lower(graph: ir.Graph, node: ir.Node) -> None:
    heads, kv_heads = check(node)
    query, key, value, past_k, past_v, seqlens, total, cos, sin = gqa_inputs(node)
    inputs = [query, past_k, past_v, seqlens, total, cos, sin, *([key, value] if key is not None else [])]
    replace_node(graph, [node], OP, inputs, list(node.outputs[:3]), 3,
                 num_heads=heads, kv_num_heads=kv_heads, scale=float(attr(node, "scale", 0.0)),
                 softcap=float(attr(node, "softcap", 0.0)), local_window_size=int(attr(node, "local_window_size", -1)))


def not_applicable(dtype: ir.DataType, layout: str, has_gqa: bool) -> str | None:
    """Why the pass has nothing to do in this engine (None: it may)."""
    if dtype != ir.DataType.FLOAT16:
        return f"a {dtype} engine: the op takes float16"
    if not has_gqa:
        return "no GroupQueryAttention in the graph"
    if layout != "static":
        return f"the {layout} KV-cache layout (the op writes the static layout's cache in place)"
    return None


class CustomAttention(ir_passes.InPlacePass):
    def __init__(self, dtype: str) -> None:
        """`dtype`: the engine's compute dtype (PassContext.dtype)."""
        super().__init__()
        self.dtype = DTYPES[dtype]
        self.notes: list[str] = []

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        graph = model.graph
        gqa = [n for n in graph if n.op_type == "GroupQueryAttention" and n.domain == MS_DOMAIN]
        why = not_applicable(self.dtype, model.metadata_props.get(LAYOUT_KEY, "concat"), bool(gqa))
        if why:
            self.notes.append(why)
            return ir_passes.PassResult(model, modified=False)
        lowered, skipped = 0, Counter()
        for node in gqa:
            try:
                lower(graph, node)
                lowered += 1
            except NoMatch as reason:
                skipped[str(reason).split(": ", 1)[-1]] += 1
        if lowered:
            model.opset_imports[CUSTOM_DOMAIN] = 1
            self.notes.append(f"{lowered} x GroupQueryAttention -> {OP}")
        self.notes += [f"{n} x left: {reason}" for reason, n in skipped.items()]
        return ir_passes.PassResult(model, modified=bool(lowered))
