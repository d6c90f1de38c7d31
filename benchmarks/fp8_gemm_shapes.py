"""FP8 linears against fp16 on CUDA at serving sizes: which form of onnxruntime's FP8 kernel
runs native FP8 tensor-core GEMMs, and from which batch on it beats fp16.

    python benchmarks/fp8_gemm_shapes.py [--rows 16,64,128,512,4096,16384] [--shapes 8b] \\
        [--results r.jsonl]

For each Llama-3.1-8B linear (qkv, o, gate_up, down) and each row count M it times, on one
single-node onnxruntime session per form (CUDA provider, IO binding, inputs on the device,
median of --runs timed runs after warm-up):

    fp16            MatMul(x, W) with W fp16 (K, N)
    fp8-channel     com.microsoft MatMulBlockQuantizedFp8Weight, block_size = K (one scale per
                    output channel): what `--target onnxruntime-cuda` engines held before
    fp8-block128    the same weights with block_size = 128 (each channel's scale repeated per
                    128-wide block: the same numbers)
    fp8-block128-deepgemm   block_size 128 with ORT_FP8_MATMUL_DEEPGEMM=1: onnxruntime's
                    SM90 DeepGEMM path, native FP8 multiplication where the shape is supported

Each form runs in a child process (the kernel reads its environment when the session is
made). One JSON line per (form, linear, M): microseconds and TFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from _results import report_line

SHAPES = {"8b": {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)},
          "1b": {"qkv": (2048, 3072), "o": (2048, 2048), "gate_up": (2048, 16384), "down": (8192, 2048)}}
FORMS = ("fp16", "fp8-channel", "fp8-block128", "fp8-block128-deepgemm")


def model_bytes(form: str, m: int, k: int, n: int) -> bytes:
    """One node's model: x (M, K) fp16 -> y (M, N) fp16."""
    import ml_dtypes
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [m, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [m, n])
    if form == "fp16":
        w = numpy_helper.from_array((rng.standard_normal((k, n)) * 0.02).astype(np.float16), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        inits = [w]
    else:
        block = k if form == "fp8-channel" else 128
        codes = (rng.standard_normal((n, k)) * 64).clip(-448, 448).astype(ml_dtypes.float8_e4m3fn)
        b = helper.make_tensor("b", TensorProto.FLOAT8E4M3FN, [n, k], codes.view(np.uint8).tobytes(), raw=True)
        scale = np.repeat(rng.uniform(1e-4, 3e-4, (n, 1)).astype(np.float32), k // block, axis=1)
        inits = [b, numpy_helper.from_array(scale, "b_scale"),
                 numpy_helper.from_array(np.asarray(0.05, np.float32), "a_scale")]
        node = helper.make_node("MatMulBlockQuantizedFp8Weight", ["x", "b", "b_scale", "a_scale"], ["y"],
                                domain="com.microsoft", block_size=block)
    graph = helper.make_graph([node], "linear", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def time_form(form: str, shapes: dict, rows: list[int], runs: int) -> list[dict]:
    """In this process: every (linear, M) of one form."""
    import torch  # noqa: F401  (loads the CUDA libraries onnxruntime-gpu links against)
    import onnxruntime as ort

    out = []
    for name, (k, n) in shapes.items():
        for m in rows:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            sess = ort.InferenceSession(model_bytes(form, m, k, n), opts, providers=["CUDAExecutionProvider"])
            x = ort.OrtValue.ortvalue_from_numpy(np.random.default_rng(1).standard_normal((m, k)).astype(np.float16),
                                                 "cuda", 0)
            y = ort.OrtValue.ortvalue_from_shape_and_type((m, n), np.float16, "cuda", 0)
            binding = sess.io_binding()
            binding.bind_ortvalue_input("x", x)
            binding.bind_ortvalue_output("y", y)
            for _ in range(5):
                sess.run_with_iobinding(binding)
            reps = max(3, min(200, int(2e12 / (2 * m * k * n) * 50)))  # ~tens of ms per sample
            samples = []
            for _ in range(runs):
                t0 = time.perf_counter()
                for _ in range(reps):
                    sess.run_with_iobinding(binding)
                binding.synchronize_outputs()
                samples.append((time.perf_counter() - t0) / reps)
            us = statistics.median(samples) * 1e6
            out.append(dict(form=form, linear=name, m=m, k=k, n=n, us=round(us, 2),
                            spread_us=round((max(samples) - min(samples)) * 1e6, 2),
                            tflops=round(2 * m * k * n / (us * 1e-6) / 1e12, 1)))
            del sess
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="16,64,128,512,4096,16384")
    ap.add_argument("--shapes", default="8b", choices=sorted(SHAPES))
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--results")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    if args.child:
        print(json.dumps(time_form(args.child, SHAPES[args.shapes], rows, args.runs)))
        return
    records = []
    for form in args.forms.split(","):
        env = dict(os.environ, ORT_FP8_MATMUL_DEEPGEMM="1" if form.endswith("deepgemm") else "0")
        done = subprocess.run([sys.executable, __file__, "--child", form, "--rows", args.rows, "--shapes",
                               args.shapes, "--runs", str(args.runs)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{form}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        records += json.loads(done.stdout.strip().splitlines()[-1])
    base = {(r["linear"], r["m"]): r["us"] for r in records if r["form"] == "fp16"}
    for r in records:
        if (r["linear"], r["m"]) in base:
            r["vs_fp16"] = round(base[(r["linear"], r["m"])] / r["us"], 3)
        report_line(r, args.results)


if __name__ == "__main__":
    main()
