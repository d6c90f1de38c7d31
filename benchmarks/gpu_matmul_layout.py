"""fp16 linears on CUDA by weight layout and op: does onnxruntime's cuBLAS path read a (K, N) weight
(MatMul, what default engines hold) as fast as its transpose (N, K) at decode sizes, and how does
our Linear op (custom-ops engines) compare, linear by linear?

    python benchmarks/gpu_matmul_layout.py [--rows 1,64] [--shapes 1b,8b] [--results r.jsonl]

For each Llama linear (qkv, o, gate_up, down, lm_head) and row count M, one session per form
holds COPIES independent copies of the linear (distinct weights, more bytes than the L2 cache),
all fed by one input, and replays them as one CUDA graph (IO binding, inputs and outputs on
the device); a copy's time is the median replay over COPIES:

    matmul          MatMul(x, W), W fp16 (K, N)
    fused-transb    com.microsoft FusedMatMul(x, Wt, transB=1), Wt fp16 (N, K)
    gemm-transb     Gemm(x, Wt, transB=1) (x 2-D)
    ours-linear     optimizer.ops Linear(x, Wt) (runtime/custom_ops: our GEMV at 1-4 rows, cuBLAS
                    above; the library built with nvcc on first use)

One JSON line per (form, linear, M): microseconds a copy and the weight bytes read per second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _graph_replay import replay_us
from _results import report_line

SHAPES = {"1b": {"qkv": (2048, 3072), "o": (2048, 2048), "gate_up": (2048, 16384), "down": (8192, 2048),
                 "lm_head": (2048, 128256)},
          "8b": {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096),
                 "lm_head": (4096, 128256)}}
FORMS = ("matmul", "fused-transb", "gemm-transb", "ours-linear")
OURS = "optimizer.ops"  # runtime.custom_ops.DOMAIN
COPIES = 8


def weights(k: int, n: int, copies: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [((rng.random((k, n), dtype=np.float32) - 0.5) * 0.04).astype(np.float16) for _ in range(copies)]


def model_bytes(form: str, ws: list[np.ndarray]) -> bytes | str:
    """len(ws) linears x (M, K) -> y_i (M, N), M symbolic, fp16, in the given weight layout."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = ws[0].shape
    nodes, inits, outs = [], [], []
    for i, w in enumerate(ws):
        y = f"y{i}"
        outs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT16, ["m", n]))
        if form == "matmul":
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [y]))
        elif form == "ours-linear":
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"w{i}"))
            nodes.append(helper.make_node("Linear", ["x", f"w{i}"], [y], domain=OURS))
        else:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"w{i}"))
            op, domain = ("FusedMatMul", "com.microsoft") if form == "fused-transb" else ("Gemm", "")
            nodes.append(helper.make_node(op, ["x", f"w{i}"], [y], domain=domain, transB=1))
    graph = helper.make_graph(nodes, "linears", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["m", k])],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1),
                                                    helper.make_opsetid(OURS, 1)])
    model.ir_version = 10
    return model.SerializeToString() if model.ByteSize() < 2**31 - 1 else _external(model)


def _external(model) -> str:
    import os
    import tempfile

    import onnx

    d = tempfile.mkdtemp()  # left for the OS: a benchmark's scratch
    path = os.path.join(d, "m.onnx")
    onnx.save_model(model, path, save_as_external_data=True, location="m.data")
    return path


def session_options(form: str, cuda: bool):
    """Session options for a form: our custom-op library registered for ours (its CUDA kernels
    on CUDA)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if form == "ours-linear":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from runtime import custom_ops

        custom_ops.register(so, cuda=cuda)
    return so


def session(form: str, ws: list[np.ndarray]):
    import torch  # noqa: F401  (loads the CUDA libraries onnxruntime-gpu links against)
    import onnxruntime as ort

    return ort.InferenceSession(model_bytes(form, ws), session_options(form, cuda=True),
                                providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])


def time_rows(sess, m: int, graph_id: int, k: int, n: int, copies: int, runs: int) -> float:
    """Median microseconds a linear at M rows, from replays of one CUDA graph of `copies` of them."""
    import onnxruntime as ort

    x = ort.OrtValue.ortvalue_from_numpy(np.random.default_rng(1).standard_normal((m, k)).astype(np.float16),
                                         "cuda", 0)
    ys = {f"y{i}": ort.OrtValue.ortvalue_from_shape_and_type([m, n], np.float16, "cuda", 0) for i in range(copies)}
    return replay_us(sess, {"x": x}, ys, graph_id, runs) / copies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,64")
    ap.add_argument("--shapes", default="1b")
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--results")
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    for shape in args.shapes.split(","):
        for linear, (k, n) in SHAPES[shape].items():
            copies = 2 if linear == "lm_head" else COPIES
            ws = weights(k, n, copies)
            for form in args.forms.split(","):
                try:
                    sess = session(form, ws)
                except Exception as e:  # a form the build lacks: say so, go on
                    report_line({"shape": shape, "linear": linear, "form": form,
                                 "error": f"{type(e).__name__}: {str(e)[:300]}"}, args.results)
                    continue
                for graph_id, m in enumerate(rows, start=1):
                    us = time_rows(sess, m, graph_id, k, n, copies, args.runs)
                    report_line({"shape": shape, "linear": linear, "m": m, "k": k, "n": n, "form": form,
                                 "us": round(us, 2), "weight_tb_s": round(k * n * 2 / us / 1e6, 3)}, args.results)
                del sess


if __name__ == "__main__":
    main()
