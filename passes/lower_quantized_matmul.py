"""Lower quantized linears to onnxruntime's MatMulNBits (com.microsoft).

Capture writes every linear as MatMul(x, W^T) with an initializer named `<module>.weight`.
For each module that calibration quantized, this pass replaces that MatMul with

    MatMulNBits(x, B, scales[, zero_points])  K=in, N=out, bits, block_size, accuracy_level

packing the integer codes the way the kernel reads them: B (N, K/block, block*bits/8) uint8,
4-bit codes two to a byte (low nibble first); scales (N, K/block) in the weight's dtype;
zero points omitted when symmetric (the kernel's default is 2^(bits-1)), else packed like B.
The kernel computes (q - zero) * scale, exactly the torch fake-quant weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnx_ir.passes as ir_passes

from calibration.rtn import QuantizedLinear
from passes._match import MS_DOMAIN, add_initializer, ensure_ms_opset, replace_value


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


def pack(q: QuantizedLinear, scale_dtype: type = np.float32) -> PackedWeight:
    codes = q.qweight.numpy()  # (N, K)
    scales, zeros = q.scales.numpy(), q.zeros.numpy()  # (N, groups)
    n, k = codes.shape
    bits = q.spec.bits
    block = block_size_for(k, q.spec.group_width(k))
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
    if not (zeros == 2 ** (bits - 1)).all():
        zero_points = _pack_rows(zeros, bits)
    return PackedWeight(np.ascontiguousarray(B), scales.astype(scale_dtype), zero_points, block, bits)


def _pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return values.astype(np.uint8)
    n, m = values.shape
    padded = np.zeros((n, m + (m % 2)), np.uint8)
    padded[:, :m] = values
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)


class LowerQuantizedMatMul(ir_passes.InPlacePass):
    def __init__(self, codes: dict[str, QuantizedLinear], accuracy_level: int = 0) -> None:
        super().__init__()
        self.codes = codes
        self.accuracy_level = accuracy_level

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        graph = model.graph
        by_initializer = {name + ".weight": q for name, q in self.codes.items()}
        lowered = 0
        for node in list(graph):
            if node.op_type != "MatMul" or node.domain != "":
                continue
            weight = node.inputs[1]
            q = by_initializer.get(weight.name) if weight is not None and weight.is_initializer() else None
            if q is None:
                continue
            dtype = weight.const_value.dtype.numpy()
            packed = pack(q, dtype)
            n, k = q.qweight.shape
            base = weight.name.removesuffix(".weight")
            inputs = [node.inputs[0],
                      add_initializer(graph, base + ".qweight", packed.B),
                      add_initializer(graph, base + ".scales", packed.scales)]
            if packed.zero_points is not None:
                inputs.append(add_initializer(graph, base + ".qzeros", packed.zero_points))
            new = ir.node("MatMulNBits", inputs, domain=MS_DOMAIN, name=node.name,
                          attributes={"K": k, "N": n, "bits": packed.bits, "block_size": packed.block_size,
                                      "accuracy_level": self.accuracy_level})
            graph.insert_before(node, new)
            replace_value(graph, node.outputs[0], new.outputs[0])
            graph.remove(node, safe=True)
            if not weight.uses():
                del graph.initializers[weight.name]
            lowered += 1
        if lowered:
            ensure_ms_opset(model)
        return ir_passes.PassResult(model, modified=lowered > 0)
