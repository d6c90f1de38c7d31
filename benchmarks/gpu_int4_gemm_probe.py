"""Is int4 no slower than fp16 at batch 64? The LinearInt4 GEMM against cuBLAS fp16, linear by linear.

    python benchmarks/gpu_int4_gemm_probe.py [--shapes 1b,8b] [--linears qkv,gate_up] [--rows 16,64,256]
                                             [--configs 0,1] [--forms cublas-fp16,band-int4] [--fill 132]
                                             [--results r.jsonl]
    python benchmarks/gpu_int4_gemm_probe.py --table r.jsonl      # the comparison, from a results file

A probe for issue 20's open target (int4 never slower than fp16 at batch 64). For each Llama
linear and row count M, --copies distinct weights (8 by default; the 1B int4 q/k/v's 8, 24 MB,
fit an H100's L2: more make them as cold as in a model's step) multiplied by one input in one CUDA
graph, replayed; a copy's time is the median replay over the copies. Forms:
  cublas-fp16   torch's fp16 linear (cuBLAS), the fp16 engines' path above 4 rows;
  band-int4     the weights dequantized to float16 in bands of 16M values, each multiplied by
                cuBLAS: LinearInt4's path above 4 rows before gemm_int4_mma.cuh (still taken for
                shapes it does not take, and with OPTIMIZER_INT4_GEMM=dequantize; a band wider
                than one call's outputs is copied into its columns here, in place there);
  mma-int4-cN   runtime/custom_ops/gemm_int4_mma.cuh in tile configuration N (0: 128 outputs a
                block, 1: 256, both by mma.sync; 2: 128 by Hopper's warpgroup MMA; 4: 0's tile with two
                steps of K a pipeline stage where K's steps pair up; 5: 2's tile with x staged through
                registers, LinearInt4's from 32 rows on an H100 / H200; N + 10: an 8-deep pipeline, not 4;
                N + 20: a 3-deep one; N + 100 h: blocks of at most 64 >> h rows, h 1-3; N + 1000: K's
                parts added by atomics, not in a thread block cluster; N + 2000: each part's sums
                stored, added in part order after, LinearInt4's choice without SwiGLU; N + 10000:
                the GEMM and its conversion as programmatic dependent launches, each GEMM reading
                its first weights while the kernel before it ends; N + 100000: each thread storing its
                own sums one by one, not through shared memory), the codes read straight into the
                MMA's registers, K split so that the grid has about --fill blocks (at most 8 parts, or
                --most-parts where each part stores its sums).
A form's time is its copies' in one graph: with N + 10000 each copy's GEMM starts while the one
before ends, which LinearInt4's plainly launched GEMM does not; the model's captured step
(gpu_kernels.py --replay-only, benchmarks/gpu/int4_replay_ab.sh) is the measure of a choice (run49's
two steps a stage: 16 rows, gate/up 15.9 against 19.6 us here, the step 1.084 against 1.099 ms).
Weights in onnxruntime-genai's int4 format (symmetric blocks of 32). Each int4 form's results are
checked against its weights dequantized and multiplied in fp32 (`max_abs_diff`); `weight_tb_s`
counts the bytes each form's weights take. Needs torch with CUDA and nvcc (compiled in the run).
One JSON line per (shape, linear, M, form).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import tempfile
from pathlib import Path

from _nvcc import compile_library
from _results import report_line
from gpu_gemv_probe import dequantize, graph_us, int4_weight  # the 4-bit probe's weights; graph timing
from gpu_matmul_layout import SHAPES  # the linears' (K, N)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SOURCE = Path(__file__).resolve().parent / "cuda" / "gemm_int4_probe.cu"
COPIES = 8
BLOCK = 32
BAND_VALUES = 16 << 20  # linear_int4.cu's kBandValues


def build(folder: Path) -> ctypes.CDLL:
    lib = compile_library(folder / "gemm_int4_probe.so", [SOURCE])
    lib.gemm_int4_registers.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 6 + [ctypes.c_void_p]
    lib.gemm_int4_splits.argtypes = [ctypes.c_int] * 7
    lib.gemm_int4_dequantize.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 2 + [ctypes.c_long] * 2 + \
        [ctypes.c_void_p]
    return lib


def checked(rc: int, what: str) -> None:
    if rc:
        raise RuntimeError(f"{what} returned {rc}")


class Linear:
    """One linear's weights: COPIES distinct fp16 matrices for cuBLAS, as many in 4 bits (and their
    fp32 dequantization, the reference), and a dequantization band."""

    def __init__(self, k: int, n: int, copies: int):
        import torch

        self.k, self.n, self.copies = k, n, copies
        self.fp16 = [torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02 for _ in range(copies)]
        self.int4 = [int4_weight(n, k, BLOCK) for _ in range(copies)]
        self.refs = [dequantize(*w) for w in self.int4]
        self.band_rows = max(1, min(n, BAND_VALUES // k))
        self.band = torch.empty(self.band_rows, k, device="cuda", dtype=torch.float16)


def stream() -> int:
    """The current stream: inside torch.cuda.graph, the capturing one."""
    import torch

    return torch.cuda.current_stream().cuda_stream


def forms_for(lib, w: Linear, x, outs, work, args) -> list[tuple]:
    """(form, launch, splits) for each form timed: launch() runs all copies once."""
    import torch

    m, n, k = x.shape[0], w.n, w.k

    def cublas():
        for weight, y in zip(w.fp16, outs):
            torch.matmul(x, weight.t(), out=y)

    def banded():
        for (codes, scales), y in zip(w.int4, outs):
            for first in range(0, n, w.band_rows):
                count = min(w.band_rows, n - first)
                checked(lib.gemm_int4_dequantize(codes.data_ptr(), scales.data_ptr(), w.band.data_ptr(), k, BLOCK,
                                                 first, count, stream()), "dequantize")
                if count == n:
                    torch.matmul(x, w.band.t(), out=y)
                else:
                    y[:, first:first + count] = x @ w.band[:count].t()

    def mma(config: int, splits: int):
        def launch():
            for (codes, scales), y in zip(w.int4, outs):
                checked(lib.gemm_int4_registers(x.data_ptr(), codes.data_ptr(), scales.data_ptr(), y.data_ptr(),
                                                work.data_ptr(), m, n, k, BLOCK, config, splits, stream()),
                        "gemm_int4_registers")
        return launch

    forms = [f for f in [("cublas-fp16", cublas, None), ("band-int4", banded, None)] if f[0] in args.forms.split(",")]
    for config in (int(c) for c in args.configs.split(",") if c):
        stored = config % 10000 >= 2000  # K's parts stored: up to --most-parts, else a cluster's 8
        splits = lib.gemm_int4_splits(m, n, k, config % 10, args.fill, 64 >> (config % 1000 // 100),
                                      args.most_parts if stored else 8)
        forms.append((f"mma-int4-c{config}", mma(config, splits), splits))
    return forms


def probe_linear(lib, shape: str, linear: str, w: Linear, args) -> None:
    """Each form at each row count: checked against the fp32 reference, then timed."""
    import torch

    for m in (int(r) for r in args.rows.split(",")):
        x = torch.randn(m, w.k, device="cuda", dtype=torch.float16)
        outs = [torch.empty(m, w.n, device="cuda", dtype=torch.float16) for _ in range(w.copies)]
        work = torch.empty(max(8, args.most_parts), m, w.n, device="cuda", dtype=torch.float32)  # the parts' sums
        for form, launch, splits in forms_for(lib, w, x, outs, work, args):
            launch()
            torch.cuda.synchronize()
            diff, nbytes = 0.0, w.k * w.n * 2
            if form != "cublas-fp16":
                diff = max(float((y.float() - x.float() @ r.t()).abs().max()) for r, y in zip(w.refs, outs))
                nbytes = w.k * w.n // 2 + (w.k // BLOCK) * w.n * 2
            us = graph_us(launch, w.copies, args.runs)
            report_line({"shape": shape, "linear": linear, "m": m, "k": w.k, "n": w.n, "form": form,
                         "splits": splits, "us": round(us, 2), "fill": args.fill, "copies": w.copies,
                         "most_parts": args.most_parts,
                         "weight_tb_s": round(nbytes / us / 1e6, 3), "max_abs_diff": round(diff, 5)}, args.results)


LAYERS = {"1b": 16, "8b": 32}  # Llama-3.2-1B's and Llama-3.1-8B's


def table(lines: list[dict]) -> str:
    """Per (shape, linear, rows): cuBLAS fp16's us, the bands', the fastest GEMM form's (which, and
    its time over fp16's: < 1 is int4 faster), then each shape's decode step at each row count:
    its layers' linears and the lm_head, summed. A GEMM form timed with another --fill than 132 is
    named with it (mma-int4-c0@264)."""
    times: dict[tuple, dict[str, float]] = {}
    for r in lines:
        fill = r.get("fill", 132)
        form = r["form"] + (f"@{fill}" if fill != 132 and r["form"].startswith("mma-") else "")
        times.setdefault((r["shape"], r["linear"], r["m"]), {})[form] = r["us"]
    def cell(us: float | None) -> str:
        return f"{us:8.1f}" if us is not None else f"{'-':>8}"

    out = [f"{'shape':5} {'linear':8} {'rows':>4} {'fp16':>8} {'band':>8} {'best mma':>8} {'form':>14} {'/fp16':>6}"]
    sums: dict[tuple, list[float]] = {}
    for (shape, linear, m), forms in sorted(times.items()):
        mma = {f: us for f, us in forms.items() if f.startswith("mma-")}
        best = min(mma, key=mma.get) if mma else None
        fp16 = forms.get("cublas-fp16")
        ratio = f"{mma[best] / fp16:6.2f}" if best and fp16 else f"{'':6}"
        out.append(f"{shape:5} {linear:8} {m:4d} {cell(fp16)} {cell(forms.get('band-int4'))} "
                   f"{cell(mma[best] if best else None)} {best or '-':>14} {ratio}")
        times_a_step = 1 if linear == "lm_head" else LAYERS.get(shape, 1)
        total = sums.setdefault((shape, m), [0.0, 0.0])
        total[0] += times_a_step * (fp16 or 0.0)
        total[1] += times_a_step * (mma[best] if best else 0.0)
    for (shape, m), (fp16, mma) in sorted(sums.items()):
        out.append(f"{shape} {m} rows, a step's linears ({LAYERS.get(shape, 1)} layers and the lm_head): "
                   f"fp16 {fp16:.0f} us, best mma {mma:.0f} us" + (f" ({mma / fp16:.2f}x)" if fp16 and mma else ""))
    return "\n".join(out)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1b,8b")
    ap.add_argument("--linears", default="", help="the linears probed (default: all of each shape's)")
    ap.add_argument("--rows", default="16,64,256")
    ap.add_argument("--configs", default="0,1", help="gemm_int4_mma.cuh's tiles (see above)")
    ap.add_argument("--forms", default="cublas-fp16,band-int4", help="the reference forms timed")
    ap.add_argument("--fill", type=int, default=132, help="blocks the split-K grid aims for")
    ap.add_argument("--most-parts", type=int, default=8,
                    help="the most parts of K where each stores its sums (+2000; LinearInt4's: 8)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--copies", type=int, default=COPIES,
                    help="distinct weights a linear (the lm_head: 2); more: colder in L2, as in a model's step")
    ap.add_argument("--results")
    ap.add_argument("--table", help="print the table of a results file instead of probing")
    args = ap.parse_args()
    if args.table:
        print(table([json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]))
        return
    with tempfile.TemporaryDirectory() as scratch:
        lib = build(Path(scratch))
        for shape in args.shapes.split(","):
            for linear, (k, n) in SHAPES[shape].items():
                if args.linears and linear not in args.linears.split(","):
                    continue
                probe_linear(lib, shape, linear, Linear(k, n, 2 if linear == "lm_head" else args.copies), args)
                torch.cuda.empty_cache()  # the linear's weights, released on return


if __name__ == "__main__":
    main()
