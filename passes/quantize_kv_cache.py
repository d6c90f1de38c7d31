"""int8 KV cache: GroupQueryAttention stores K and V as int8 codes with one static scale each.

Runs after kv-layout. For each layer's GroupQueryAttention node (found by the layer index in
its past_key input's name), the pass:

- makes the node's past and present K/V int8 (the graph inputs and outputs, which are the
  runtime's cache interface);
- adds the layer's scales as initializers `kv_scale.{i}.key` / `kv_scale.{i}.value` (shape
  [1]) on the kernel's k_scale / v_scale inputs, with k_quant_type = v_quant_type =
  PER_TENSOR and kv_cache_bit_width = 8.

A quarter of the cache's memory and of the bytes attention reads each step. onnxruntime runs
it on the CPU (its CUDA kernel and PagedAttention are not used here). Without scales
(the build's `kv_cache_dtype` is not int8) the pass changes nothing.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import onnx_ir as ir
import onnx_ir.passes as ir_passes

from passes._match import MS_DOMAIN, add_initializer

K_SCALE_INPUT, V_SCALE_INPUT = 12, 13  # GroupQueryAttention's k_scale / v_scale
_LAYER = re.compile(r"\.(\d+)\.")


class QuantizeKvCache(ir_passes.InPlacePass):
    def __init__(self, scales: Sequence[tuple[float, float]] = ()) -> None:
        super().__init__()
        self.scales = list(scales)
        self.notes: list[str] = []

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        if not self.scales:
            self.notes.append("float KV cache (no int8 scales were calibrated)")
            return ir_passes.PassResult(model, modified=False)
        graph = model.graph
        gqa = [n for n in graph if n.op_type == "GroupQueryAttention" and n.domain == MS_DOMAIN]
        if len(gqa) != len(self.scales):
            raise ValueError(f"{len(self.scales)} layers of KV-cache scales for {len(gqa)} "
                             "GroupQueryAttention nodes")
        for node in gqa:
            i = layer_index(node)
            k_scale, v_scale = self.scales[i]
            for value in (node.inputs[3], node.inputs[4], node.outputs[1], node.outputs[2]):
                value.dtype = ir.DataType.INT8
            if len(node.inputs) <= V_SCALE_INPUT:
                node.resize_inputs(V_SCALE_INPUT + 1)
            node.replace_input_with(K_SCALE_INPUT, add_initializer(graph, f"kv_scale.{i}.key",
                                                                   np.asarray([k_scale], np.float32)))
            node.replace_input_with(V_SCALE_INPUT, add_initializer(graph, f"kv_scale.{i}.value",
                                                                   np.asarray([v_scale], np.float32)))
            node.attributes["k_quant_type"] = ir.AttrString("k_quant_type", "PER_TENSOR")
            node.attributes["v_quant_type"] = ir.AttrString("v_quant_type", "PER_TENSOR")
            node.attributes["kv_cache_bit_width"] = ir.AttrInt64("kv_cache_bit_width", 8)
        self.notes.append(f"int8 KV cache: {len(gqa)} layers, one static scale per layer for K and V")
        return ir_passes.PassResult(model, modified=True)


def layer_index(node: ir.Node) -> int:
    """The layer of a GroupQueryAttention node, from its past_key input (past_key_values.{i}.key)."""
    past = node.inputs[3]
    match = _LAYER.search(past.name or "") if past is not None else None
    if match is None:
        raise ValueError(f"{node.name}: no past_key_values.{{i}}.key input to tell its layer "
                         "(run quantize-kv-cache after fuse-attention)")
    return int(match.group(1))
