"""Can a plain tensor-core kernel make int4 no slower than fp16 at batch 64? (benchmarks/cuda/)

    python benchmarks/gpu_int4_gemm_probe.py [--shapes 1b,8b] [--rows 16,64] [--results r.jsonl]

A probe for the int4 GEMM issue 20 asks for (int4 never slower than fp16 at batch 64): the
product's LinearInt4 dequantizes its weights band by band into L2 for cuBLAS above 4 rows, and
onnxruntime's int4 GEMMs were 0.69-0.94x fp16 there (run8, run9). For each Llama linear and row
count M, COPIES distinct weights (more bytes than the L2 cache) multiplied by one input in one
CUDA graph, replayed: torch's fp16 linear (cuBLAS) against the probe (gemm_int4_probe.cu: WMMA on
64 x 64 tiles, the 4-bit weights dequantized in shared memory, onnxruntime-genai's format:
symmetric blocks of 32), K split so that the grid fills the GPU; a copy's time is the median
replay over COPIES. The probe's results are checked against its weights dequantized and
multiplied in fp32 (`max_abs_diff`). `weight_tb_s` counts the bytes each form reads. Needs torch
with CUDA and nvcc (the kernel is compiled in the run). One JSON line per (shape, linear, M, form).
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
from pathlib import Path

from _results import report_line
from gpu_gemv_probe import dequantize, graph_us, int4_weight  # the 4-bit probe's weights; graph timing
from gpu_matmul_layout import SHAPES  # the linears' (K, N)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SOURCE = Path(__file__).resolve().parent / "cuda" / "gemm_int4_probe.cu"
COPIES = 8
BLOCK = 32
TILE = 64  # the probe's rows and outputs a block
FILL = 264  # blocks that keep the H200's 132 SMs busy (two each)


def build(folder: Path) -> ctypes.CDLL:
    from runtime.custom_ops import find_nvcc

    nvcc = find_nvcc()
    if nvcc is None:
        raise SystemExit("the probe needs nvcc (PATH, $CUDA_HOME/bin or /usr/local/cuda/bin)")
    out = folder / "gemm_int4_probe.so"
    subprocess.run([nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-shared",
                    "-gencode=arch=compute_90,code=sm_90", "-o", str(out), str(SOURCE)], check=True)
    lib = ctypes.CDLL(str(out))
    lib.gemm_int4_probe.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 4 + [ctypes.c_void_p]
    return lib


def splits_for(m: int, n: int, k: int) -> int:
    """K cut into this many parts so that the grid has about FILL blocks (at most one a step)."""
    tiles = -(-m // TILE) * -(-n // TILE)
    return max(1, min(k // BLOCK, -(-FILL // tiles)))


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1b,8b")
    ap.add_argument("--rows", default="16,64")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--results")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        lib = build(Path(scratch))
        for shape in args.shapes.split(","):
            for linear, (k, n) in SHAPES[shape].items():
                copies = 2 if linear == "lm_head" else COPIES
                ws = [torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02 for _ in range(copies)]
                q4 = [int4_weight(n, k, BLOCK) for _ in range(copies)]
                for m in (int(r) for r in args.rows.split(",")):
                    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                    fp16_out = [torch.empty(m, n, device="cuda", dtype=torch.float16) for _ in range(copies)]
                    int4_out = [torch.empty(m, n, device="cuda", dtype=torch.float16) for _ in range(copies)]
                    work = torch.empty(m, n, device="cuda", dtype=torch.float32)
                    splits = splits_for(m, n, k)

                    def launch_cublas():
                        for w, y in zip(ws, fp16_out):
                            torch.matmul(x, w.t(), out=y)

                    def launch_probe():
                        stream = torch.cuda.current_stream().cuda_stream
                        for (codes, scales), y in zip(q4, int4_out):
                            rc = lib.gemm_int4_probe(x.data_ptr(), codes.data_ptr(), scales.data_ptr(), y.data_ptr(),
                                                     work.data_ptr(), m, n, k, splits, stream)
                            if rc:
                                raise RuntimeError(f"gemm_int4_probe returned {rc}")

                    launch_probe()
                    torch.cuda.synchronize()
                    diff = max(float((y.float() - x.float() @ dequantize(*w).t()).abs().max())
                               for w, y in zip(q4, int4_out))
                    int4_bytes = k * n // 2 + (k // BLOCK) * n * 2
                    for form, launch, nbytes, check in (("cublas-fp16", launch_cublas, k * n * 2, 0.0),
                                                        ("probe-int4", launch_probe, int4_bytes, diff)):
                        us = graph_us(launch, copies, args.runs)
                        report_line({"shape": shape, "linear": linear, "m": m, "k": k, "n": n, "form": form,
                                     "splits": splits if form == "probe-int4" else None, "us": round(us, 2),
                                     "weight_tb_s": round(nbytes / us / 1e6, 3), "max_abs_diff": check},
                                    args.results)


if __name__ == "__main__":
    main()
