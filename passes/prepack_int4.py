"""int4 MatMulNBits weights stored in the layout of onnxruntime's native Hopper (SM90) mixed-input
GEMM: `weight_prepacked=2`.

onnxruntime-gpu (1.31) runs 4-bit MatMulNBits with TensorRT-LLM's fpA_intB kernels. Weights in
the standard layout are repacked at load for the SM80-class kernel, which an H200 runs through a
compatibility path: at 64 rows on the 1B shape its GEMMs took 1.43 ms a step against fp16's 0.88
(benchmarks/results/gpu-decode/run5-kernels.jsonl). Only weights already stored in the SM90
layout reach the native TMA/WGMMA kernel (onnxruntime's MatMulNBits chooses it for
weight_prepacked=2 on a 9.0 device), so this pass stores them so. The engine then runs on CUDA
devices of compute capability 9.0 only (the manifest says the provider it needs), and only with
an onnxruntime-gpu built with that kernel: the 1.31.1 Linux wheel is not (on an H200 it refuses
the node, "weight_prepacked=2 (SM90 layout) is not supported by this ONNX Runtime build";
benchmarks/results/gpu-decode/run8-table.txt), so the build and the runtime ask first
(runtime/int4_sm90.py) and say so.

The layout, for B of shape (N, K/block, block/2) (4-bit codes u in [0, 15], low nibble first
along K): within each run of 32 columns of K, the columns are taken in the order `K_ORDER`; the
codes are laid out column-major (row n, then k), and each run of 8 codes (one 32-bit word) is
reordered as `WORD_ORDER` before the codes are packed two to a byte, low nibble first. It is a
pure rearrangement of the codes: scales (N, K/block) stay as they are, and symmetric weights
need no zero points (MatMulNBits' implicit 8). tests/test_prepack_int4.py holds it, byte for
byte, to onnxruntime-genai 0.18's packer (a port of onnxruntime's CUDA one).

Eligible nodes: 4-bit MatMulNBits with block 64 or 128, no zero points or g_idx, N a multiple
of 16; the build checks (optimizer.build_checks) that the engine is fp16 with symmetric int4
weights for --target onnxruntime-cuda.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes as ir_passes

from passes._match import MS_DOMAIN, Deferred, add_initializer, attr

SM90 = 2  # MatMulNBits' weight_prepacked value for the SM90 layout
BLOCKS = (64, 128)
K_ORDER = np.array([0, 1, 8, 9, 16, 17, 24, 25, 2, 3, 10, 11, 18, 19, 26, 27,
                    4, 5, 12, 13, 20, 21, 28, 29, 6, 7, 14, 15, 22, 23, 30, 31])
WORD_ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])


def sm90_int4_layout(B: np.ndarray, n: int, k: int) -> np.ndarray:
    """B (N, K/block, block/2) uint8 in MatMulNBits' standard 4-bit layout -> the same bytes
    rearranged for the SM90 kernel (same shape). Pure function."""
    flat = np.ascontiguousarray(B).reshape(n, k // 2)
    codes = np.empty((n, k), np.uint8)
    codes[:, 0::2], codes[:, 1::2] = flat & 0x0F, flat >> 4
    columns = (np.arange(k) // 32) * 32 + K_ORDER[np.arange(k) % 32]
    words = codes[:, columns].reshape(-1, 8)[:, WORD_ORDER].reshape(-1)
    return (words[0::2] | (words[1::2] << 4)).astype(np.uint8).reshape(B.shape)


def eligible(node: ir.Node) -> str | None:
    """Why a MatMulNBits `node` cannot take the SM90 layout, or None when it can."""
    if attr(node, "bits", 4) != 4 or attr(node, "block_size") not in BLOCKS:
        return f"bits {attr(node, 'bits', 4)}, block {attr(node, 'block_size')} (needs 4 bits, block 64 or 128)"
    if any(i is not None for i in node.inputs[3:]):
        return "zero points or g_idx (needs symmetric weights)"
    if attr(node, "N") % 16 or attr(node, "weight_prepacked", 0):
        return f"N = {attr(node, 'N')} (needs a multiple of 16), or already prepacked"
    if node.inputs[1] is None or node.inputs[1].const_value is None:
        return "B is not an initializer"
    return None


class PrepackInt4Sm90(ir_passes.InPlacePass):
    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        graph = model.graph
        done, skipped = 0, {}
        for node in [n for n in graph if n.op_type == "MatMulNBits" and n.domain == MS_DOMAIN]:
            why = eligible(node)
            if why is not None:
                skipped[why] = skipped.get(why, 0) + 1
                continue
            B = node.inputs[1]
            n, k, source = attr(node, "N"), attr(node, "K"), B.const_value
            # a new initializer: another node (a tied embedding's Gather) may read the original
            packed = add_initializer(graph, f"{B.name}.sm90", Deferred(
                tuple(source.shape), np.dtype(np.uint8), lambda s=source, n=n, k=k: sm90_int4_layout(s.numpy(), n, k)))
            node.replace_input_with(1, packed)
            node.attributes["weight_prepacked"] = ir.AttrInt64("weight_prepacked", SM90)
            done += 1
        self.notes.append(f"{done} MatMulNBits weights in the SM90 layout (weight_prepacked=2)")
        self.notes += [f"{count} left as they are: {why}" for why, count in skipped.items()]
        return ir_passes.PassResult(model, modified=done > 0)
