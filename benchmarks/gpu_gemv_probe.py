"""Can plain GEMV kernels beat what onnxruntime runs at batch-1 decode sizes? (benchmarks/cuda/)

    python benchmarks/gpu_gemv_probe.py [--shapes 1b,8b] [--rows 1,4] [--results r.jsonl]

A probe for the next custom op (runtime/custom_ops): onnxruntime's fp16 linears at one row run
cuBLAS kernels that read the small projections at 1.2-1.7 TB/s (run10-matmul-layout). For each
Llama linear and row count M, COPIES distinct weights (more bytes than the L2 cache) are
multiplied by one input in one CUDA graph, replayed: torch's linear (cuBLAS) against the probe's
kernel (weights stored (N, K), as it reads them); a copy's time is the median replay over COPIES.
The fp16 probe's results are checked against cuBLAS's first (`max_abs_diff`). And the 4-bit probe (gemv_int4_probe.cu:
onnxruntime MatMulNBits' layout, symmetric blocks of 64), checked against its weights dequantized
and multiplied in fp32; onnxruntime's own one-row int4 kernel read ~1.3 TB/s (run8-kernels).
`weight_tb_s` counts the bytes each form reads. Needs torch with CUDA and nvcc (the kernels are
compiled in the run). One JSON line per (shape, linear, M, form).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _nvcc import compile_library
from _results import report_line
from gpu_matmul_layout import SHAPES  # the linears' (K, N)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SOURCES = [Path(__file__).resolve().parent / "cuda" / name for name in ("gemv_probe.cu", "gemv_int4_probe.cu")]
COPIES = 8


def build(folder: Path) -> ctypes.CDLL:
    lib = compile_library(folder / "gemv_probe.so", SOURCES)
    lib.gemv_f16.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 3 + [ctypes.c_void_p]
    lib.gemv_int4.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 3 + [ctypes.c_void_p]
    return lib


def int4_weight(n: int, k: int, block: int = 64):
    """Random codes in MatMulNBits' layout (N, K/block, block/2) and fp16 scales (N, K/block)."""
    import torch

    codes = torch.randint(0, 256, (n, k // block, block // 2), device="cuda", dtype=torch.uint8)
    scales = (torch.rand(n, k // block, device="cuda") * 0.002 + 0.002).to(torch.float16)
    return codes, scales


def dequantize(codes, scales):
    """(N, K) fp32: the low nibble of byte j is code 2j, the high one 2j + 1; zero point 8."""
    import torch

    n, blocks, half = codes.shape
    q = torch.stack([codes & 0xF, codes >> 4], dim=-1).reshape(n, blocks, 2 * half).float() - 8
    return (q * scales.float()[..., None]).reshape(n, blocks * 2 * half)


def graph_times(launch, runs: int) -> list[float]:
    """Microseconds a replay, `runs` times (each the mean of 10): `launch()` captured once in a
    torch CUDA graph (after one call outside it: library handles and workspaces), replayed."""
    import torch

    launch()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch()
    graph.replay()
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            graph.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) / 10 * 1e6)
    return times


def graph_us(launch, copies: int, runs: int) -> float:
    """Median microseconds a copy: `launch()` (all copies) captured once, replayed."""
    return statistics.median(graph_times(launch, runs)) / copies


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1b,8b")
    ap.add_argument("--rows", default="1,4")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--results")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        lib = build(Path(scratch))
        for shape in args.shapes.split(","):
            for linear, (k, n) in SHAPES[shape].items():
                copies = 2 if linear == "lm_head" else COPIES
                ws = [torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02 for _ in range(copies)]
                for m in (int(r) for r in args.rows.split(",")):
                    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                    ours = [torch.empty(m, n, device="cuda", dtype=torch.float16) for _ in range(copies)]
                    theirs = [torch.empty(m, n, device="cuda", dtype=torch.float16) for _ in range(copies)]

                    def launch_ours():
                        stream = torch.cuda.current_stream().cuda_stream
                        for w, y in zip(ws, ours):
                            rc = lib.gemv_f16(x.data_ptr(), w.data_ptr(), y.data_ptr(), m, n, k, stream)
                            if rc:
                                raise RuntimeError(f"gemv_f16 returned {rc}")

                    def launch_cublas():
                        for w, y in zip(ws, theirs):
                            torch.matmul(x, w.t(), out=y)

                    q4 = [int4_weight(n, k) for _ in range(copies)]
                    ours4 = [torch.empty(m, n, device="cuda", dtype=torch.float16) for _ in range(copies)]

                    def launch_int4():
                        stream = torch.cuda.current_stream().cuda_stream
                        for (codes, scales), y in zip(q4, ours4):
                            rc = lib.gemv_int4(x.data_ptr(), codes.data_ptr(), scales.data_ptr(), y.data_ptr(),
                                               m, n, k, stream)
                            if rc:
                                raise RuntimeError(f"gemv_int4 returned {rc}")

                    launch_ours()
                    launch_cublas()
                    launch_int4()
                    torch.cuda.synchronize()
                    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(ours, theirs))
                    diff4 = max(float((y.float() - x.float() @ dequantize(*w).t()).abs().max())
                                for w, y in zip(q4, ours4))
                    int4_bytes = k * n // 2 + (k // 64) * n * 2
                    for form, launch, nbytes, check in (("cublas", launch_cublas, k * n * 2, 0.0),
                                                        ("probe", launch_ours, k * n * 2, diff),
                                                        ("probe-int4", launch_int4, int4_bytes, diff4)):
                        us = graph_us(launch, copies, args.runs)
                        report_line({"shape": shape, "linear": linear, "m": m, "k": k, "n": n, "form": form,
                                     "us": round(us, 2), "weight_tb_s": round(nbytes / us / 1e6, 3),
                                     "max_abs_diff": check}, args.results)


if __name__ == "__main__":
    main()
