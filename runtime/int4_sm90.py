"""Whether the installed onnxruntime runs int4 weights stored in the layout of its native Hopper
kernel (MatMulNBits `weight_prepacked=2`, passes/prepack_int4.py).

onnxruntime builds the SM90 mixed-input kernel only where its toolchain allows: the
onnxruntime-gpu 1.31.1 Linux wheel refuses such a node when the session is made ("weight_prepacked=2
(SM90 layout) is not supported by this ONNX Runtime build", seen on an H200 on 2026-12-03,
benchmarks/results/gpu-decode/run8-table.txt). So the build asks before it quantizes and the
runtime before it opens an engine: one tiny MatMulNBits in that layout, one CUDA session.
"""

from __future__ import annotations

import functools

import numpy as np

N = K = 128  # a small shape within the pass's conditions (N a multiple of 16, K of the block)
BLOCK = 64


def probe_model() -> bytes:
    """One 4-bit MatMulNBits (fp16, N = K = 128, blocks of 64, symmetric) marked as stored in the
    SM90 layout, as a serialized ONNX model. Its codes are all 8 (zero), so any layout holds them."""
    from onnx import TensorProto, helper

    blocks = K // BLOCK
    weight = helper.make_tensor("B", TensorProto.UINT8, [N, blocks, BLOCK // 2],
                                np.full(N * blocks * BLOCK // 2, 0x88, np.uint8).tobytes(), raw=True)
    scales = helper.make_tensor("scales", TensorProto.FLOAT16, [N * blocks],
                                np.ones(N * blocks, np.float16).tobytes(), raw=True)
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft",
                            K=K, N=N, bits=4, block_size=BLOCK, weight_prepacked=2)
    graph = helper.make_graph([node], "sm90_probe",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT16, ["m", K])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, ["m", N])],
                              initializer=[weight, scales])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


@functools.lru_cache(maxsize=1)
def kernel_missing() -> str | None:
    """None when onnxruntime's CUDA provider takes the probe model; otherwise what it said."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # the refusal is reported by the caller, not logged here too
    try:
        ort.InferenceSession(probe_model(), options, providers=["CUDAExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail / RuntimeException types
        return refusal(str(e))
    return None


def refusal(message: str) -> str:
    """The sentence of onnxruntime's error that says what is wrong (it starts with the source
    location of the check), at most 300 characters."""
    first = message.split("\n")[0]
    at = first.find("weight_prepacked=2")
    return (first[at:] if at >= 0 else first)[:300]


def missing_kernel_message(said: str) -> str:
    return ("the installed onnxruntime-gpu has no native SM90 int4 kernel for weights stored with "
            f"weight_prepacked=2 (onnxruntime says: {said})")


# what to do instead, after "build" or "rebuild"
WITHOUT_LAYOUT = ("without --passes int4-sm90: the default pipeline's int4 weights run on onnxruntime's "
                  "SM80-class kernel on any CUDA GPU")


def missing_kernel_hint(verb: str) -> str:
    """The hint where onnxruntime lacks the kernel; `verb`: build (a build) or rebuild (an engine)."""
    return f"{verb} {WITHOUT_LAYOUT}; or install an onnxruntime-gpu built with the SM90 kernel"
