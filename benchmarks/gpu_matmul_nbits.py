"""onnxruntime's CUDA kernels for one linear layer of a decoder, by batch size and format.

    python benchmarks/gpu_matmul_nbits.py [--k 4096 --n 14336] [--m 1,16,64,256]

One single-node model per format: fp16 MatMul, and MatMulNBits with 4-bit weights (block 32
symmetric, block 64 symmetric, block 128 asymmetric), each timed at every M through IO
binding on device buffers (median of 50 runs after 10 warm-ups, CUDA events via torch), under
session settings that select other kernels:

  default                     onnxruntime's choice (M <= 16: fused GEMV; above: dequantize
                              the whole weight to fp16, then cuBLAS)
  fpa_intb                    ep.cuda.fpa_intb_gemm=1: the mixed-input CUTLASS GEMM (block 32,
                              no zero points in the stock wheel; weights prepacked at load)
  gemm_tune                   ep.cuda.enable_gemm_auto_tune=1 (fp16 MatMul: cuBLAS / GEMV /
                              tinygemm2 per shape)

Prints one JSON line per (format, setting, M) with the time, the weight bytes and the
bandwidth they imply, then an error line for any combination onnxruntime refused.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch  # noqa: F401  (loads the CUDA libraries onnxruntime-gpu needs)
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SETTINGS = {"default": {}, "fpa_intb": {"ep.cuda.fpa_intb_gemm": "1"},
            "gemm_tune": {"ep.cuda.enable_gemm_auto_tune": "1"}}


def model(k: int, n: int, fmt: str):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["m", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["m", n])
    rng = np.random.default_rng(0)
    if fmt == "fp16":
        w = numpy_helper.from_array((rng.normal(size=(k, n)) * 0.02).astype(np.float16), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        inits = [w]
    else:
        block, sym = {"int4-b32": (32, True), "int4-b64": (64, True), "int4-b128-asym": (128, False)}[fmt]
        blocks = k // block
        codes = rng.integers(0, 256, (n, blocks, block // 2), dtype=np.uint8)
        scales = (rng.random((n, blocks)) * 0.01 + 0.001).astype(np.float16)
        inits = [numpy_helper.from_array(codes, "w"), numpy_helper.from_array(scales.reshape(-1), "s")]
        inputs = ["x", "w", "s"]
        if not sym:
            zp = rng.integers(0, 256, (n, (blocks + 1) // 2), dtype=np.uint8)
            inits.append(numpy_helper.from_array(zp.reshape(-1), "z"))
            inputs.append("z")
        node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                                block_size=block)
    graph = helper.make_graph([node], "g", [x], [y], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 10
    return m, sum(i.ByteSize() for i in inits)


def time_it(session, x, y, iters: int = 50) -> float:
    binding = session.io_binding()
    binding.bind_ortvalue_input("x", x)
    binding.bind_ortvalue_output("y", y)
    for _ in range(10):
        session.run_with_iobinding(binding)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        session.run_with_iobinding(binding)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=14336)
    ap.add_argument("--m", default="1,16,64,256")
    args = ap.parse_args()
    ms = [int(v) for v in args.m.split(",")]
    for fmt in ("fp16", "int4-b32", "int4-b64", "int4-b128-asym"):
        proto, nbytes = model(args.k, args.n, fmt)
        for setting, entries in SETTINGS.items():
            opts = ort.SessionOptions()
            for key, value in entries.items():
                opts.add_session_config_entry(key, value)
            try:
                session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CUDAExecutionProvider"])
                for m in ms:
                    x = ort.OrtValue.ortvalue_from_numpy(np.random.default_rng(m).normal(size=(m, args.k))
                                                         .astype(np.float16), "cuda", 0)
                    y = ort.OrtValue.ortvalue_from_shape_and_type((m, args.n), np.float16, "cuda", 0)
                    ms_ = time_it(session, x, y)
                    print(json.dumps({"format": fmt, "setting": setting, "m": m, "ms": round(ms_, 4),
                                      "weight_MB": round(nbytes / 1e6, 1),
                                      "weight_GBps": round(nbytes / ms_ / 1e6, 1)}), flush=True)
            except Exception as e:  # a setting the wheel does not support for this format
                print(json.dumps({"format": fmt, "setting": setting, "error": str(e)[:300]}), flush=True)


if __name__ == "__main__":
    main()
