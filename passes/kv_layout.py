"""KV-cache layout: from per-step concatenation to a cache the runtime owns.

Runs after fuse-attention; every layer's attention must be a GroupQueryAttention node.

- `static`: one (slots, n_kv, capacity, hd) buffer per layer and K/V, bound as both past and
  present (GQA's shared-buffer mode), so each step writes its keys/values in place. The
  interface is rewritten to say so: past and present share the dims (batch, n_kv,
  kv_capacity, hd), and position_ids, which GQA does not read (its rotary positions come from
  the row lengths), leaves the inputs. Where slice-logits ran, its Slice from `logits_from`
  becomes a per-row GatherElements of the positions `logits_positions` (batch, K) names, so
  one call can prefill several right-padded prompts of different lengths and return each
  one's last logits (a decode step names position 0 of every row).
- `paged`: a pool of (num_blocks, block_size, n_kv, hd) blocks per layer and K/V, shared by
  all sequences through a block table. Each GQA node becomes onnxruntime's PagedAttention
  (CUDA only) over packed tokens: the runtime feeds the new tokens of every running sequence
  as one row, input_ids (1, T), with `cumulative_sequence_length` (B+1), `past_seqlens` (B),
  `block_table` (B, max_blocks) and `attention_metadata` (2, host memory: bounds on the new
  and total lengths, which spare the kernel a copy of the lengths back from the GPU);
  attention_mask and position_ids leave the inputs. Where slice-logits ran, its Slice from
  `logits_from` becomes a Gather of the rows `logits_indices` (N,) names: one step packs
  several sequences, and needs the logits of each one's last token only. `runtime.paged`
  feeds these inputs.

The chosen layout is written into the model's metadata (`optimizer.kv_layout`), where the
build reads it for the manifest. `concat` leaves the graph alone.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes as ir_passes
from onnx_ir.passes import common

from optimizer.core.engine_format import LAYOUTS as ENGINE_LAYOUTS
from optimizer.core.errors import InputError
from passes._match import CUSTOM_DOMAIN, MS_DOMAIN, add_initializer, attr, replace_value

LAYOUTS = ("auto", *ENGINE_LAYOUTS)  # auto: static where attention is fused, else concat
METADATA_KEY = "optimizer.kv_layout"
LOGITS_FROM, LOGITS_INDICES, LOGITS_POSITIONS = "logits_from", "logits_indices", "logits_positions"
PAGED_INPUTS = ("cumulative_sequence_length", "past_seqlens", "block_table", "attention_metadata")


class KvLayoutError(InputError):
    """The graph cannot take the requested layout (the message says why)."""


def resolve_layout(requested: str, fused: bool) -> str:
    """`auto` is static where attention is fused and concat where it is not."""
    if requested == "auto":
        return "static" if fused else "concat"
    return requested


class KvCacheLayout(ir_passes.InPlacePass):
    def __init__(self, layout: str = "auto", block_size: int = 16) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise KvLayoutError(f"unknown KV-cache layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        self.requested, self.block_size = layout, block_size
        self.notes: list[str] = []

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        graph = model.graph
        gqa = [n for n in graph if n.op_type == "GroupQueryAttention" and n.domain == MS_DOMAIN]
        layout = resolve_layout(self.requested, bool(gqa))
        model.metadata_props[METADATA_KEY] = layout
        if layout == "concat":
            self.notes.append("concat layout: past and present are concatenated each step"
                              + ("" if gqa else " (attention is not fused)"))
            return ir_passes.PassResult(model, modified=False)
        if not gqa:
            raise KvLayoutError(f"the {layout} KV-cache layout needs fused attention (GroupQueryAttention), "
                                "and this graph has none",
                                hint="keep fuse-attention in --passes (e.g. --passes default), "
                                     "or use --kv-layout concat")
        if layout == "static":
            _to_static(graph, gqa)
            positioned = _position_logits(graph)
            _drop_unused_inputs(model, ("position_ids", LOGITS_FROM))
            self.notes.append(f"static layout: {len(gqa)} layers write K/V in place into "
                              "(batch, n_kv, kv_capacity, hd) buffers; position_ids removed"
                              + (f"; logits of each row's positions in {LOGITS_POSITIONS}" if positioned else ""))
        else:
            _to_paged(graph, gqa, self.block_size)
            gathered = _gather_logits(graph)
            _drop_unused_inputs(model, ("attention_mask", "position_ids", LOGITS_FROM))
            self.notes.append(f"paged layout: {len(gqa)} GroupQueryAttention -> PagedAttention over "
                              f"blocks of {self.block_size} tokens (CUDA only)"
                              + (f"; logits of the rows in {LOGITS_INDICES}" if gathered else ""))
        return ir_passes.PassResult(model, modified=True)


def _cache_values(graph: ir.Graph, gqa: list[ir.Node]) -> list[tuple[ir.Value, ir.Value]]:
    """(past, present) pairs of every layer's K and V; the past must be a graph input."""
    pairs = []
    inputs = set(id(v) for v in graph.inputs)
    for node in gqa:
        for past, present in ((node.inputs[3], node.outputs[1]), (node.inputs[4], node.outputs[2])):
            if past is None or id(past) not in inputs:
                raise KvLayoutError(f"{node.name}: its past K/V is not a graph input")
            pairs.append((past, present))
    return pairs


def _drop_unused_inputs(model: ir.Model, names: tuple[str, ...]) -> None:
    """Remove the nodes the rewrite left without consumers, then these inputs if unread."""
    common.RemoveUnusedNodesPass()(model)
    for value in [v for v in model.graph.inputs if v.name in names]:
        if not value.uses():
            model.graph.inputs.remove(value)


def _to_static(graph: ir.Graph, gqa: list[ir.Node]) -> None:
    for past, present in _cache_values(graph, gqa):
        shape = past.shape
        dims = ["batch", shape[1], "kv_capacity", shape[3]] if shape is not None else None
        past.shape = present.shape = ir.Shape(dims) if dims else None


def _to_paged(graph: ir.Graph, gqa: list[ir.Node], block_size: int) -> None:
    int32 = ir.TensorType(ir.DataType.INT32)
    table_inputs = {
        "cumulative_sequence_length": ir.Value(name="cumulative_sequence_length", type=int32,
                                               shape=ir.Shape(["batch_plus_1"])),
        "past_seqlens": ir.Value(name="past_seqlens", type=int32, shape=ir.Shape(["batch"])),
        "block_table": ir.Value(name="block_table", type=int32, shape=ir.Shape(["batch", "max_blocks"])),
        "attention_metadata": ir.Value(name="attention_metadata", type=int32, shape=ir.Shape([2])),
    }
    graph.inputs.extend(table_inputs.values())
    for past, present in _cache_values(graph, gqa):
        n_kv, hd = past.shape[1], past.shape[3]
        past.shape = present.shape = ir.Shape(["num_blocks", block_size, n_kv, hd])
    for node in gqa:
        _gqa_to_paged(graph, node, table_inputs)


def _logits_slice(graph: ir.Graph) -> ir.Node | None:
    """slice-logits' Slice(hidden, logits_from, end, axis 1), if the graph has one."""
    start = next((v for v in graph.inputs if v.name == LOGITS_FROM), None)
    if start is None:
        return None
    (node, _), = start.uses()
    if node.op_type != "Slice" or node.inputs[1] is not start:
        raise KvLayoutError(f"{LOGITS_FROM} feeds {node.op_type} {node.name}, not the lm_head's Slice")
    return node


def _position_logits(graph: ir.Graph) -> bool:
    """Slice(hidden, logits_from, ...) -> GatherElements(hidden, positions (B, K, 1) expanded
    to (B, K, H), axis 1): row r keeps the hidden states of its positions logits_positions[r]."""
    node = _logits_slice(graph)
    if node is None:
        return False
    hidden = node.inputs[0]
    width = _hidden_width(node)
    positions = ir.Value(name=LOGITS_POSITIONS, type=ir.TensorType(ir.DataType.INT64),
                         shape=ir.Shape(["batch", "logits_rows"]))
    graph.inputs.append(positions)
    axes = add_initializer(graph, "logits_positions.axes", np.asarray([2], np.int64))
    across = add_initializer(graph, "logits_positions.hidden", np.asarray([1, 1, width], np.int64))
    column = ir.node("Unsqueeze", [positions, axes], name="logits_positions/column")
    index = ir.node("Expand", [column.outputs[0], across], name="logits_positions/index")
    gather = ir.node("GatherElements", [hidden, index.outputs[0]], {"axis": 1}, name="logits_positions/gather")
    gather.outputs[0].type = node.outputs[0].type
    graph.insert_before(node, [column, index, gather])
    replace_value(graph, node.outputs[0], gather.outputs[0])
    graph.remove(node, safe=True)
    return True


def _hidden_width(sliced: ir.Node) -> int:
    """The lm_head's input width: MatMulNBits' K, the columns of our Linear's (N, K) weight, or
    the rows of the MatMul's (possibly transposed) weight."""
    (head, _), = sliced.outputs[0].uses()
    if head.op_type == "MatMulNBits":
        return int(attr(head, "K"))
    weight = head.inputs[1]
    transpose = weight.producer()
    if head.op_type == "Linear" and head.domain == CUSTOM_DOMAIN:
        width = weight.shape[1] if weight.shape is not None else None
    elif transpose is not None and transpose.op_type == "Transpose" and transpose.inputs[0].shape is not None:
        width = transpose.inputs[0].shape[-1]  # a tied embedding (V, H), transposed
    else:
        width = weight.shape[0] if weight.shape is not None else None
    if not isinstance(width, int):
        raise KvLayoutError(f"the lm_head {head.name} has no static input width")
    return width


def _gather_logits(graph: ir.Graph) -> bool:
    """slice-logits' Slice(hidden, logits_from, end, axis 1) -> Gather(hidden, logits_indices, axis 1)."""
    node = _logits_slice(graph)
    if node is None:
        return False
    indices = ir.Value(name=LOGITS_INDICES, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(["rows"]))
    graph.inputs.append(indices)
    gather = ir.node("Gather", [node.inputs[0], indices], {"axis": 1}, name="logits_gather")
    gather.outputs[0].type = node.outputs[0].type
    graph.insert_before(node, gather)
    replace_value(graph, node.outputs[0], gather.outputs[0])
    graph.remove(node, safe=True)
    return True


def _gqa_to_paged(graph: ir.Graph, node: ir.Node, tables: dict[str, ir.Value]) -> None:
    """GQA (B, S, X) -> PagedAttention over (B*S, X) tokens, reshaped back to (B, S, H)."""
    q, k, v, past_k, past_v = node.inputs[:5]
    cos, sin = node.inputs[7], node.inputs[8]
    name = node.name + "/paged"
    # token widths from the heads (the kernel's shape inference needs them static)
    heads, kv_heads, head_dim = attr(node, "num_heads"), attr(node, "kv_num_heads"), past_k.shape[3]
    widths = {"q": heads * head_dim if k is not None else (heads + 2 * kv_heads) * head_dim,
              "k": kv_heads * head_dim, "v": kv_heads * head_dim}
    head = []
    flat_qkv = []
    for tag, x in (("q", q), ("k", k), ("v", v)):
        if x is None:  # packed QKV: key and value are absent
            flat_qkv.append(None)
            continue
        shape = add_initializer(graph, f"{name}.{tag}_shape", np.asarray([-1, widths[tag]], np.int64))
        head.append(ir.node("Reshape", [x, shape], name=f"{name}/{tag}_tokens"))
        flat_qkv.append(head[-1].outputs[0])
    paged = ir.node("PagedAttention",
                    [*flat_qkv, past_k, past_v, tables["cumulative_sequence_length"],
                     tables["past_seqlens"], tables["block_table"], cos, sin,
                     *[None] * 6,  # slot_mapping, head_sink, q/k norm weights, k/v scales: unused
                     tables["attention_metadata"]],
                    {"num_heads": attr(node, "num_heads"), "kv_num_heads": attr(node, "kv_num_heads"),
                     "scale": attr(node, "scale", 0.0), "softcap": attr(node, "softcap", 0.0),
                     "local_window_size": attr(node, "local_window_size", -1),
                     "do_rotary": attr(node, "do_rotary", 0),
                     "rotary_interleaved": attr(node, "rotary_interleaved", 0)},
                    domain=MS_DOMAIN, num_outputs=3, name=name)
    # back to (B, S, H): the leading dims of the query, the width of the output
    lead = ir.node("Shape", [q], {"start": 0, "end": 2}, name=name + "/lead_dims")
    hidden = add_initializer(graph, name + ".hidden", np.asarray([-1], np.int64))
    out_shape = ir.node("Concat", [lead.outputs[0], hidden], {"axis": 0}, name=name + "/out_shape")
    out = ir.node("Reshape", [paged.outputs[0], out_shape.outputs[0]], name=name + "/out")
    graph.insert_before(node, [*head, paged, lead, out_shape, out])
    for old, new in zip(node.outputs, (out.outputs[0], paged.outputs[1], paged.outputs[2])):
        replace_value(graph, old, new)
    graph.remove(node, safe=True)
