"""Lower quantized linears into the engine: MatMulNBits, or standard DequantizeLinear forms.

Capture writes every linear as MatMul(x, W^T) with an initializer named `<module>.weight`.
Each module that calibration quantized is lowered by its kind and the weight format:

- int4 / int8, format "matmulnbits" (onnxruntime targets): one com.microsoft node, below;
- int4 / int8, format "dequantize" (the TensorRT target: standard ops only):
  MatMul(x, DequantizeLinear(codes, scale[, zero])) with blocked DQ (see _dq_weights);
- FP8 W8A8, formats "matmulnbits" / "dequantize": the activation goes through
  QuantizeLinear -> DequantizeLinear (float8e4m3fn, its static per-tensor scale; linears
  reading one tensor share the pair) and the weight through per-channel DequantizeLinear:
  the Q/DQ form TensorRT fuses into FP8 GEMMs. onnxruntime runs it unfused (and must not
  apply its QDQ selector fusions, which assume int8: see runtime.session.disabled_optimizers).
- FP8 W8A8, format "cuda" (the onnxruntime-cuda target): one com.microsoft
  MatMulBlockQuantizedFp8Weight node, onnxruntime's CUDA FP8-weight kernel:
  (x, B (N, K) float8e4m3fn, b_scale (N, K/128) float32, a_scale ()) with block_size = 128
  (K where 128 does not divide it): each row's per-channel scale repeated over its blocks,
  the block size onnxruntime's native SM90 FP8 GEMM takes; a_scale quantizes x to E4M3 in
  the kernel (W8A8 numerics, the same as the Q/DQ form). int4 / int8 stay MatMulNBits.

MatMulNBits replaces the MatMul with

    MatMulNBits(x, B, scales[, zero_points])  K=in, N=out, bits, block_size, accuracy_level

packing the integer codes the way the kernel reads them: B (N, K/block, block*bits/8) uint8,
4-bit codes two to a byte (low nibble first); scales (N, K/block) in the weight's dtype;
zero points omitted when symmetric (the kernel's default is 2^(bits-1)), else packed like B.
The kernel computes (q - zero) * scale, exactly the torch fake-quant weight.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import ml_dtypes
import numpy as np
import onnx_ir as ir
import onnx_ir.passes as ir_passes

from passes._dq_weights import DqWeight, fp8_dq_weight, integer_dq_weight
from passes.quantized_weights import DeferredIntWeight, Fp8Weight, IntWeight, QuantizedWeight
from passes._match import MS_DOMAIN, Deferred, add_initializer, ensure_ms_opset, replace_value

WEIGHT_FORMATS = ("matmulnbits", "dequantize", "cuda")  # cuda: matmulnbits + the CUDA FP8 kernel
FP8_WEIGHT_OP = "MatMulBlockQuantizedFp8Weight"
# FP8 weight scales come in blocks of 128 along K: onnxruntime 1.31's SM90 DeepGEMM path (native
# FP8 multiplication, runtime.session.FP8_DEEPGEMM) takes only that block size.
FP8_BLOCK = 128


@dataclass(frozen=True)
class PackedWeight:
    B: np.ndarray  # (N, k_blocks, blob) uint8
    scales: np.ndarray  # (N, k_blocks)
    zero_points: np.ndarray | None  # (N, ceil(k_blocks * bits / 8)) uint8, or None (symmetric)
    block_size: int
    bits: int


BLOCK_SIZES = (256, 128, 64, 32, 16)  # what onnxruntime's CPU kernel accepts


def block_size_for(k: int, group: int) -> int:
    """The MatMulNBits block for groups of `group` columns in a K-wide weight.

    Groups are blocks. A per-channel weight (one group spanning K) uses the largest kernel
    block that divides K, with its scale repeated per block: the same function."""
    if group != k:
        if group not in BLOCK_SIZES:
            raise ValueError(f"group size {group} is not a MatMulNBits block size {BLOCK_SIZES}")
        return group
    return next((b for b in BLOCK_SIZES if k % b == 0), 16)  # else padded to a multiple of 16


def pack(q: IntWeight, scale_dtype: type = np.float32, symmetric: bool | None = None) -> PackedWeight:
    """MatMulNBits' arrays of `q`; zero points omitted when symmetric (default: when every zero
    point is the kernel's default; a deferred weight says so in advance)."""
    codes = q.codes  # (N, K)
    scales, zeros = q.scales, q.zeros  # (N, groups)
    n, k = codes.shape
    bits = q.bits
    block = block_size_for(k, q.group)
    k_blocks = -(-k // block)
    repeat = k_blocks // scales.shape[1]  # blocks per group: 1, or all of them (per-channel)
    scales, zeros = np.repeat(scales, repeat, axis=1), np.repeat(zeros, repeat, axis=1)
    padded = np.empty((n, k_blocks * block), np.uint8)
    padded[:, :k] = codes
    padded[:, k:] = zeros[:, -1:]  # padding dequantizes to 0
    if bits == 4:
        pairs = padded.reshape(n, k_blocks, block // 2, 2)
        B = (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)
    elif bits == 8:
        B = padded.reshape(n, k_blocks, block)
    else:
        raise ValueError(f"MatMulNBits lowering supports 4 and 8 bits, not {bits}")
    zero_points = None
    if not (q.symmetric if symmetric is None else symmetric):
        zero_points = _pack_rows(zeros, bits)
    return PackedWeight(np.ascontiguousarray(B), scales.astype(scale_dtype), zero_points, block, bits)


@dataclass(frozen=True)
class PackedLayout:
    """The shapes `pack` gives a weight, known before its codes are: (N, K), groups, bits."""

    B: tuple[int, int, int]
    scales: tuple[int, int]
    zero_points: tuple[int, int] | None
    block_size: int
    bits: int


def packed_layout(n: int, k: int, group: int, bits: int, symmetric: bool) -> PackedLayout:
    block = block_size_for(k, group)
    k_blocks = -(-k // block)
    zero_points = None if symmetric else (n, k_blocks if bits == 8 else (k_blocks + 1) // 2)
    return PackedLayout((n, k_blocks, block * bits // 8), (n, k_blocks), zero_points, block, bits)


def layout_of(p: PackedWeight) -> PackedLayout:
    zp = None if p.zero_points is None else tuple(p.zero_points.shape)
    return PackedLayout(tuple(p.B.shape), tuple(p.scales.shape), zp, p.block_size, p.bits)


class _PackCache:
    """The last few deferred weights packed: B, scales and zero points are read one after the
    other (and again by a packed q/k/v), each pack computed once while it is needed."""

    SIZE = 8

    def __init__(self) -> None:
        self.entries: OrderedDict[str, PackedWeight] = OrderedDict()

    def get(self, base: str, q: DeferredIntWeight, scale_dtype: type) -> PackedWeight:
        if base in self.entries:
            self.entries.move_to_end(base)
            return self.entries[base]
        packed = pack(q.load(), scale_dtype, q.symmetric)
        expected = packed_layout(*q.shape, q.group, q.bits, q.symmetric)
        if layout_of(packed) != expected:
            raise RuntimeError(f"{base}: packed as {layout_of(packed)}, announced as {expected}")
        self.entries[base] = packed
        if len(self.entries) > self.SIZE:
            self.entries.popitem(last=False)
        return packed


def _pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return values.astype(np.uint8)
    n, m = values.shape
    padded = np.zeros((n, m + (m % 2)), np.uint8)
    padded[:, :m] = values
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)


def fp8_rows(q: Fp8Weight) -> tuple[np.ndarray, np.ndarray]:
    """The CUDA FP8 kernel's weight: codes (N, K) float8e4m3fn (the torch layout) and float32
    scales (N, K / block): each row's one scale repeated over its blocks of FP8_BLOCK, where
    FP8_BLOCK divides K (the block size onnxruntime's native SM90 FP8 GEMM takes), else one
    block of K. The same numbers either way."""
    codes = q.codes.astype(ml_dtypes.float8_e4m3fn)
    k = codes.shape[1]
    blocks = k // FP8_BLOCK if k % FP8_BLOCK == 0 else 1
    scales = np.repeat(q.scales.astype(np.float32).reshape(-1, 1), blocks, axis=1)
    return np.ascontiguousarray(codes), scales


def _tied_table(value: ir.Value | None) -> ir.Value | None:
    """The initializer behind Transpose(table, perm [1, 0]) (a tied lm_head's weight), if so."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "Transpose" or not node.inputs[0].is_initializer():
        return None
    perm = node.attributes["perm"].value if "perm" in node.attributes else None
    return node.inputs[0] if list(perm or []) == [1, 0] else None


class LowerQuantizedMatMul(ir_passes.InPlacePass):
    def __init__(self, codes: dict[str, QuantizedWeight], accuracy_level: int = 0,
                 weight_format: str = "matmulnbits") -> None:
        super().__init__()
        if weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"unknown weight format {weight_format!r}: {WEIGHT_FORMATS}")
        self.codes = codes
        self.accuracy_level = accuracy_level
        self.weight_format = weight_format
        self.notes: list[str] = []

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        graph = model.graph
        by_initializer = {name + ".weight": q for name, q in self.codes.items()}
        self._activations: dict[tuple[int, float], ir.Value] = {}  # shared Q/DQ per input and scale
        self._packed: dict[str, PackedLayout] = {}  # base name -> what its MatMulNBits reads
        self._cache = _PackCache()  # deferred weights (a streaming build)
        lowered: dict[str, int] = {}
        for node in list(graph):
            if node.op_type != "MatMul" or node.domain != "":
                continue
            weight = _tied_table(node.inputs[1]) or node.inputs[1]  # a tied lm_head reads Transpose(table)
            q = by_initializer.get(weight.name) if weight is not None and weight.is_initializer() else None
            if q is None:
                continue
            dtype = weight.const_value.dtype.numpy()
            base = weight.name.removesuffix(".weight")
            if isinstance(q, Fp8Weight) and self.weight_format == "cuda":
                new = [self._fp8_weight_node(graph, node, base, q)]
                kind = f"FP8 {FP8_WEIGHT_OP}"
            elif isinstance(q, Fp8Weight):
                x = self._fp8_activation(graph, node, q.input_scale, dtype)
                new = self._dq_nodes(graph, base, fp8_dq_weight(q, dtype))
                new.append(ir.node("MatMul", [x, new[-1].outputs[0]], name=node.name))
                kind = "FP8 Q/DQ"
            elif self.weight_format == "dequantize":
                q = q.load() if isinstance(q, DeferredIntWeight) else q  # standard ops: held in memory
                new = self._dq_nodes(graph, base, integer_dq_weight(q, dtype))
                new.append(ir.node("MatMul", [node.inputs[0], new[-1].outputs[0]], name=node.name))
                kind = f"int{q.bits} DequantizeLinear"
            else:
                new = [self._matmul_nbits(graph, node, base, q, dtype)]
                kind = f"int{q.bits} MatMulNBits"
            graph.insert_before(node, new)
            replace_value(graph, node.outputs[0], new[-1].outputs[0])
            graph.remove(node, safe=True)
            if not weight.uses():
                del graph.initializers[weight.name]
            lowered[kind] = lowered.get(kind, 0) + 1
        if self._packed:
            shared = self._gather_shared_tables(graph)
            if shared:
                lowered["embedding -> GatherBlockQuantized (the lm_head's codes)"] = shared
        if any("MatMulNBits" in k or FP8_WEIGHT_OP in k or "Gather" in k for k in lowered):
            ensure_ms_opset(model)
        self.notes = [f"{n} linears -> {kind}" for kind, n in lowered.items()]
        return ir_passes.PassResult(model, modified=bool(lowered))

    def _gather_shared_tables(self, graph: ir.Graph) -> int:
        """A table lowered to MatMulNBits (an embedding tied to a quantized lm_head) and read by
        Gather: GatherBlockQuantized over the same initializers (reshaped to rows), so the float
        table leaves the engine. Returns how many Gathers were rewritten."""
        count = 0
        for node in list(graph):
            if node.op_type != "Gather" or node.domain != "" or \
                    (node.attributes["axis"].value if "axis" in node.attributes else 0) != 0:
                continue
            table = node.inputs[0]
            base = table.name.removesuffix(".weight")
            packed = self._packed.get(base) if table.is_initializer() else None
            if packed is None:
                continue
            q = self.codes[base]
            width = q.shape[1] if isinstance(q, DeferredIntWeight) else q.codes.shape[1]
            rows = add_initializer(graph, base + ".qweight_rows_shape", np.asarray([packed.B[0], -1], np.int64))
            data = ir.node("Reshape", [graph.initializers[base + ".qweight"], rows], name=base + "/rows")
            inputs = [data.outputs[0], node.inputs[1], graph.initializers[base + ".scales"]]
            if packed.zero_points is not None:
                inputs.append(graph.initializers[base + ".qzeros"])
            gather = ir.node("GatherBlockQuantized", inputs, domain=MS_DOMAIN, name=node.name,
                             attributes={"gather_axis": 0, "quantize_axis": 1, "block_size": packed.block_size,
                                         "bits": packed.bits})
            new = [data, gather]
            if packed.B[1] * packed.block_size != width:  # blocks padded past the table's width
                start = add_initializer(graph, base + ".rows_start", np.asarray([0], np.int64))
                end = add_initializer(graph, base + ".rows_end", np.asarray([width], np.int64))
                axis = add_initializer(graph, base + ".rows_axis", np.asarray([-1], np.int64))
                new.append(ir.node("Slice", [gather.outputs[0], start, end, axis], name=base + "/unpad"))
            graph.insert_before(node, new)
            replace_value(graph, node.outputs[0], new[-1].outputs[0])
            graph.remove(node, safe=True)
            if not table.uses():
                del graph.initializers[table.name]
            count += 1
        return count

    def _matmul_nbits(self, graph: ir.Graph, node: ir.Node, base: str, q: IntWeight | DeferredIntWeight,
                      dtype: type) -> ir.Node:
        if isinstance(q, DeferredIntWeight):
            n, k = q.shape
            layout = packed_layout(n, k, q.group, q.bits, q.symmetric)
            arrays = self._deferred_arrays(base, q, layout, dtype)
        else:
            n, k = q.codes.shape
            packed = pack(q, dtype)
            layout, arrays = layout_of(packed), (packed.B, packed.scales, packed.zero_points)
        self._packed[base] = layout
        inputs = [node.inputs[0],
                  add_initializer(graph, base + ".qweight", arrays[0]),
                  add_initializer(graph, base + ".scales", arrays[1])]
        if layout.zero_points is not None:
            inputs.append(add_initializer(graph, base + ".qzeros", arrays[2]))
        return ir.node("MatMulNBits", inputs, domain=MS_DOMAIN, name=node.name,
                       attributes={"K": k, "N": n, "bits": layout.bits, "block_size": layout.block_size,
                                   "accuracy_level": self.accuracy_level})

    def _deferred_arrays(self, base: str, q: DeferredIntWeight, layout: PackedLayout,
                         dtype: type) -> tuple[Deferred, Deferred, Deferred | None]:
        """B, scales and zero points of a deferred weight, packed when the file is written."""
        def part(field: str) -> Callable[[], np.ndarray]:
            return lambda: getattr(self._cache.get(base, q, dtype), field)

        zp = None if layout.zero_points is None else Deferred(layout.zero_points, np.dtype(np.uint8), part("zero_points"))
        return (Deferred(layout.B, np.dtype(np.uint8), part("B")),
                Deferred(layout.scales, np.dtype(dtype), part("scales")), zp)

    @staticmethod
    def _fp8_weight_node(graph: ir.Graph, node: ir.Node, base: str, q: Fp8Weight) -> ir.Node:
        codes, row_scales = fp8_rows(q)
        inputs = [node.inputs[0], add_initializer(graph, base + ".qweight", codes),
                  add_initializer(graph, base + ".scales", row_scales),
                  add_initializer(graph, base + ".input_scale", np.asarray(q.input_scale, np.float32))]
        return ir.node(FP8_WEIGHT_OP, inputs, domain=MS_DOMAIN, name=node.name,
                       attributes={"block_size": codes.shape[1] // row_scales.shape[1]})

    @staticmethod
    def _dq_nodes(graph: ir.Graph, base: str, w: DqWeight) -> list[ir.Node]:
        inputs = [add_initializer(graph, base + ".qweight", w.codes),
                  add_initializer(graph, base + ".scales", w.scale)]
        if w.zero_point is not None:
            inputs.append(add_initializer(graph, base + ".qzeros", w.zero_point))
        attributes = {"axis": w.axis} | ({"block_size": w.block_size} if w.block_size else {})
        return [ir.node("DequantizeLinear", inputs, attributes=attributes, name=base + "/DequantizeWeight")]

    def _fp8_activation(self, graph: ir.Graph, node: ir.Node, scale: float, dtype: type) -> ir.Value:
        """x -> QuantizeLinear(E4M3) -> DequantizeLinear, once per (input, scale)."""
        x = node.inputs[0]
        key = (id(x), scale)
        if key not in self._activations:
            s = add_initializer(graph, node.name + ".input_scale", np.asarray(scale, dtype))
            zero = add_initializer(graph, node.name + ".input_zero", np.asarray(0, ml_dtypes.float8_e4m3fn))
            quant = ir.node("QuantizeLinear", [x, s, zero], name=node.name + "/QuantizeInput")
            dequant = ir.node("DequantizeLinear", [quant.outputs[0], s], name=node.name + "/DequantizeInput")
            graph.insert_before(node, [quant, dequant])
            self._activations[key] = dequant.outputs[0]
        return self._activations[key]
