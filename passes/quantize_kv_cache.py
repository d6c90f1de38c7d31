"""Quantized KV cache: K and V stored as 8-bit codes with one static scale per layer each.

Runs after kv-layout, on the build's calibrated scales:

- int8 (`--kv-cache-dtype int8`): each layer's GroupQueryAttention node (static or concat
  layout; onnxruntime runs it on the CPU);
- fp8 (`--kv-cache-dtype fp8`): each layer's PagedAttention node (paged layout, CUDA), codes
  float8 E4M3.

For each such node (found by the layer index in its cache input's name) the pass makes the
node's past/present K and V (the graph inputs and outputs, which are the runtime's cache
interface) of the quantized type, adds the layer's scales as initializers `kv_scale.{i}.key` /
`kv_scale.{i}.value` (shape [1]) on the kernel's k_scale / v_scale inputs, and sets
k_quant_type = v_quant_type = PER_TENSOR (GroupQueryAttention also kv_cache_bit_width = 8).
Half (fp16 engines) or a quarter (fp32) of the cache's memory and of the bytes attention reads
each step. Without scales (a float cache) the pass changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx_ir as ir
import onnx_ir.passes as ir_passes

from passes._match import MS_DOMAIN, add_initializer

_LAYER = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class _Kernel:
    op_type: str
    k_scale: int  # the k_scale input (v_scale follows)
    code: ir.DataType
    bit_width: bool  # sets kv_cache_bit_width


KERNELS = {  # cache dtype -> the attention kernel that stores it
    "int8": _Kernel("GroupQueryAttention", 12, ir.DataType.INT8, True),
    "fp8": _Kernel("PagedAttention", 14, ir.DataType.FLOAT8E4M3FN, False),
}


class QuantizeKvCache(ir_passes.InPlacePass):
    def __init__(self, scales: Sequence[tuple[float, float]] = (), dtype: str = "int8") -> None:
        super().__init__()
        self.scales = list(scales)
        self.dtype = "int8" if dtype == "auto" else dtype
        self.notes: list[str] = []

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        if not self.scales:
            self.notes.append("float KV cache (no int8 / fp8 scales were calibrated)")
            return ir_passes.PassResult(model, modified=False)
        if self.dtype not in KERNELS:
            raise ValueError(f"no quantized KV-cache kernel for {self.dtype!r}: one of {sorted(KERNELS)}")
        kernel = KERNELS[self.dtype]
        graph = model.graph
        nodes = [n for n in graph if n.op_type == kernel.op_type and n.domain == MS_DOMAIN]
        if len(nodes) != len(self.scales):
            raise ValueError(f"{len(self.scales)} layers of {self.dtype} KV-cache scales for {len(nodes)} "
                             f"{kernel.op_type} nodes")
        for node in nodes:
            i = layer_index(node)
            k_scale, v_scale = self.scales[i]
            for value in (node.inputs[3], node.inputs[4], node.outputs[1], node.outputs[2]):
                value.dtype = kernel.code
            if len(node.inputs) <= kernel.k_scale + 1:
                node.resize_inputs(kernel.k_scale + 2)
            node.replace_input_with(kernel.k_scale, add_initializer(graph, f"kv_scale.{i}.key",
                                                                    np.asarray([k_scale], np.float32)))
            node.replace_input_with(kernel.k_scale + 1, add_initializer(graph, f"kv_scale.{i}.value",
                                                                        np.asarray([v_scale], np.float32)))
            node.attributes["k_quant_type"] = ir.AttrString("k_quant_type", "PER_TENSOR")
            node.attributes["v_quant_type"] = ir.AttrString("v_quant_type", "PER_TENSOR")
            if kernel.bit_width:
                node.attributes["kv_cache_bit_width"] = ir.AttrInt64("kv_cache_bit_width", 8)
        self.notes.append(f"{self.dtype} KV cache: {len(nodes)} {kernel.op_type} layers, one K and one V "
                          "scale each")
        return ir_passes.PassResult(model, modified=True)


def layer_index(node: ir.Node) -> int:
    """The layer of an attention node, from its past-key input (past_key_values.{i}.key)."""
    past = node.inputs[3]
    match = _LAYER.search(past.name or "") if past is not None else None
    if match is None:
        raise ValueError(f"{node.name}: no past_key_values.{{i}}.key input to tell its layer "
                         "(run quantize-kv-cache after fuse-attention and kv-layout)")
    return int(match.group(1))
