"""Our custom ops (runtime/custom_ops) against the onnxruntime subgraphs they replace, on CUDA.

    python benchmarks/gpu_custom_ops.py [--rows 1,64] [--shapes 1b,8b] [--results r.jsonl]

SwiGLU: an fp16 engine's MLP computes silu(gate) * up from the packed gate/up projection as
Split -> QuickGelu(alpha=1) -> Mul, three kernels; `optimizer.ops::SwiGLU` is one. For each
intermediate width (Llama-3.2-1B 8192, Llama-3.1-8B 14336) and row count M, one session per
form holds COPIES independent copies fed by one input x (M, 2I) and replays them as one CUDA
graph (IO binding, device buffers); a copy's time is the median replay over COPIES. The forms'
outputs are compared first. One JSON line per (form, shape, M).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _graph_replay import replay_us
from _results import report_line

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INTER = {"1b": 8192, "8b": 14336}
FORMS = ("stock", "swiglu")
COPIES = 16


def model_bytes(form: str, inter: int, copies: int) -> bytes:
    from onnx import TensorProto, helper

    from runtime.custom_ops import DOMAIN

    nodes, outs = [], []
    for i in range(copies):
        y = f"y{i}"
        outs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT16, ["m", inter]))
        if form == "stock":
            nodes += [helper.make_node("Split", ["x"], [f"g{i}", f"u{i}"], axis=-1, num_outputs=2),
                      helper.make_node("QuickGelu", [f"g{i}"], [f"a{i}"], domain="com.microsoft", alpha=1.0),
                      helper.make_node("Mul", [f"a{i}", f"u{i}"], [y])]
        else:
            nodes.append(helper.make_node("SwiGLU", ["x"], [y], domain=DOMAIN))
    graph = helper.make_graph(nodes, form, [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["m", 2 * inter])],
                              outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1),
                                                    helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = 10
    return model.SerializeToString()


def session(form: str, inter: int, copies: int):
    import torch  # noqa: F401  (loads the CUDA libraries onnxruntime-gpu links against)
    import onnxruntime as ort

    from runtime import custom_ops

    options = ort.SessionOptions()
    options.log_severity_level = 3
    custom_ops.register(options, cuda=True)
    return ort.InferenceSession(model_bytes(form, inter, copies), options,
                                providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])


def run(sess, x: np.ndarray, inter: int, copies: int, graph_id: int, runs: int) -> tuple[float, np.ndarray]:
    """Median microseconds a copy, and copy 0's output."""
    import onnxruntime as ort

    m = x.shape[0]
    ys = {f"y{i}": ort.OrtValue.ortvalue_from_shape_and_type([m, inter], np.float16, "cuda", 0) for i in range(copies)}
    inputs = {"x": ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)}
    return replay_us(sess, inputs, ys, graph_id, runs) / copies, ys["y0"].numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,64")
    ap.add_argument("--shapes", default="1b,8b")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--results")
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    for shape in args.shapes.split(","):
        inter = INTER[shape]
        inputs = {m: (np.random.default_rng(m).standard_normal((m, 2 * inter)) * 3).astype(np.float16) for m in rows}
        outputs = {}
        for form in FORMS:
            sess = session(form, inter, COPIES)
            for graph_id, m in enumerate(rows, start=1):
                us, y = run(sess, inputs[m], inter, COPIES, graph_id, args.runs)
                outputs[form, m] = y
                row = {"op": "SwiGLU", "shape": shape, "inter": inter, "m": m, "form": form, "us": round(us, 2)}
                if form != FORMS[0]:
                    base = outputs[FORMS[0], m].astype(np.float32)
                    row["max_abs_diff"] = float(np.abs(y.astype(np.float32) - base).max())
                report_line(row, args.results)
            del sess


if __name__ == "__main__":
    main()
