"""Our GEMV kernels as a decode step calls them: every projection of a Llama shape in one CUDA graph.

    python benchmarks/gpu_gemv_chain.py [--shape 1b] [--rows 1] [--variants now,pdl-off,rev=HEAD]

The product's runtime/custom_ops/linear.cu, compiled here behind a C entry point
(benchmarks/cuda/linear_chain.cu), called as `--passes custom-ops` engines call it at decode:
per layer NormLinear (q/k/v), Linear (o), NormLinearSwiGLU (gate/up), Linear (down), each with
its own weights, then the lm_head; the whole chain captured in one torch CUDA graph and replayed
(the attention between q/k/v and o is left out: o reads a fixed input). `step` is one replay (the
GEMVs of one decode step, back to back); each projection alone is also timed as a chain of its
layers' copies. `weight_tb_s` counts the weight bytes. Variants, each in its own process:
`now` (the working tree's linear.cu), `rev=REV` (as of git revision REV), `file=PATH` (a
candidate, e.g. benchmarks/cuda/linear_pdl.cu), each followed by `:NAME=VALUE` items setting
one of its constants or, as `env.VAR=VALUE`, an environment variable, e.g.
`file=cuda/linear_pdl.cu:kPreload=4:env.OPTIMIZER_CUDA_PDL=0`. Each variant's outputs are
checked against torch in fp32 (`max_abs_diff`). Needs torch with CUDA and nvcc.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import report_line

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "runtime" / "custom_ops"
SHAPES = {"1b": dict(hidden=2048, qkv=3072, inter=8192, vocab=128256, layers=16),
          "8b": dict(hidden=4096, qkv=6144, inter=14336, vocab=128256, layers=32)}
EPS = 1e-5


def compile_command(linear_cu: Path, out: Path) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from runtime.custom_ops import find_nvcc

    nvcc = find_nvcc()
    if nvcc is None:
        raise SystemExit("the chain needs nvcc (PATH, $CUDA_HOME/bin or /usr/local/cuda/bin)")
    return [nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-shared", f"-I{OPS}",
            "-gencode=arch=compute_90,code=sm_90", "-o", str(out), str(linear_cu), str(OPS / "swiglu.cu"),
            str(ROOT / "benchmarks" / "cuda" / "linear_chain.cu"), "-ldl"]


def load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.chain_linear.argtypes = ([ctypes.c_void_p] * 6 + [ctypes.c_longlong] * 3 + [ctypes.c_float]
                                 + [ctypes.c_int] * 2 + [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int])
    return lib


class Chain:
    """Weights and buffers of every projection; `calls[kind]` the launches, in step order."""

    def __init__(self, lib, shape: dict, rows: int):
        import torch

        self.lib, self.rows = lib, rows
        h, q, i, v, layers = shape["hidden"], shape["qkv"], shape["inter"], shape["vocab"], shape["layers"]
        dev, f16 = "cuda", torch.float16

        def weight(n, k):
            return torch.randn(n, k, device=dev, dtype=f16) * (1.0 / k ** 0.5)

        def act(k):
            return torch.randn(rows, k, device=dev, dtype=f16)

        self.hidden, self.skip, self.attn = act(h), act(h), act(h)
        self.calls: dict[str, list[tuple]] = {"qkv": [], "o": [], "gate_up": [], "down": [], "lm_head": []}
        x, skip = self.hidden, self.skip
        for _ in range(layers):
            gamma1, gamma2 = (1 + 0.1 * torch.randn(h, device=dev)).to(f16), (1 + 0.1 * torch.randn(h, device=dev)).to(f16)
            qkv_y, sum1 = act(q), act(h)
            self.calls["qkv"].append((x, skip, gamma1, weight(q, h), qkv_y, sum1, q, h, 1, 0))
            o_y = act(h)
            self.calls["o"].append((self.attn, None, None, weight(h, h), o_y, None, h, h, 0, 0))
            gu_y, sum2 = act(i), act(h)
            self.calls["gate_up"].append((o_y, sum1, gamma2, weight(2 * i, h), gu_y, sum2, i, h, 1, 1))
            down_y = act(h)
            self.calls["down"].append((gu_y, None, None, weight(h, i), down_y, None, h, i, 0, 0))
            x, skip = down_y, sum2
        self.calls["lm_head"].append((x, None, None, weight(v, h), act(v), None, v, h, 0, 0))
        self.step = [c for layer in zip(*(self.calls[k] for k in ("qkv", "o", "gate_up", "down"))) for c in layer]
        self.step += self.calls["lm_head"]

    def launch(self, calls) -> None:
        import torch

        stream = torch.cuda.current_stream().cuda_stream
        error = ctypes.create_string_buffer(512)
        for x, skip, gamma, w, y, s, n, k, norm, swiglu in calls:
            ptr = (lambda t: t.data_ptr() if t is not None else None)
            if self.lib.chain_linear(ptr(x), ptr(skip), ptr(gamma), ptr(w), ptr(y), ptr(s), self.rows, n, k, EPS,
                                     norm, swiglu, stream, error, len(error)):
                raise RuntimeError(error.value.decode())

    def max_abs_diff(self, kind: str) -> float:
        """The first call of `kind` against torch in fp32."""
        import torch

        x, skip, gamma, w, y, s, n, k, norm, swiglu = self.calls[kind][0]
        self.launch([self.calls[kind][0]])
        torch.cuda.synchronize()
        h = x.float()
        if norm:
            h = h + skip.float()
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS) * gamma.float()
        out = h @ w.float().t()
        if swiglu:
            out = torch.nn.functional.silu(out[:, :n]) * out[:, n:]
        return float((out - y.float()).abs().max())


def replay_us(graph, runs: int) -> tuple[float, float, float]:
    import torch

    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            graph.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) / 10 * 1e6)
    return statistics.median(times), min(times), max(times)


def captured(chain: Chain, calls):
    import torch

    chain.launch(calls)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain.launch(calls)
    graph.replay()
    torch.cuda.synchronize()
    return graph


def weight_bytes(calls) -> int:
    return sum(c[3].numel() * 2 for c in calls)


def run_variant(args) -> None:
    """In this process: load the variant's library, time the step and each projection."""
    import torch

    lib = load(Path(args.lib))
    for rows in (int(r) for r in args.rows.split(",")):
        chain = Chain(lib, SHAPES[args.shape], rows)
        diffs = {kind: round(chain.max_abs_diff(kind), 5) for kind in chain.calls}
        for kind, calls in (("step", chain.step), *chain.calls.items()):
            us, low, high = replay_us(captured(chain, calls), args.runs)
            report_line({"variant": args.variant, "shape": args.shape, "rows": rows, "what": kind,
                         "calls": len(calls), "us": round(us, 2), "min_us": round(low, 2),
                         "max_us": round(high, 2), "weight_tb_s": round(weight_bytes(calls) / us / 1e6, 3),
                         "max_abs_diff": diffs.get(kind, max(diffs.values()))}, args.results)
        del chain
        torch.cuda.empty_cache()


def source_for(variant: str, folder: Path) -> tuple[Path, dict]:
    """The linear.cu a variant compiles, and its environment: `now`, `rev=REV` or `file=PATH`,
    then `:NAME=VALUE` items: a constant of the source set (`constexpr ... NAME = VALUE;`), or
    with NAME `env.VAR` an environment variable."""
    base, *items = variant.split(":")
    if base == "now":
        text = (OPS / "linear.cu").read_text()
    elif base.startswith("rev="):
        text = subprocess.run(["git", "show", f"{base[4:]}:runtime/custom_ops/linear.cu"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout
    elif base.startswith("file="):
        text = Path(base[5:]).read_text()
    else:
        raise SystemExit(f"unknown variant {variant!r}: now, rev=REV or file=PATH, then :NAME=VALUE items")
    env = {}
    for item in items:
        name, _, value = item.partition("=")
        if name.startswith("env."):
            env[name[4:]] = value
            continue
        text, found = re.subn(rf"(constexpr [\w ]+ {re.escape(name)} = )[^;]+;", rf"\g<1>{value};", text)
        if found != 1:
            raise SystemExit(f"{variant}: no constant {name} in {base}")
    path = folder / f"linear-{hashlib.sha256(text.encode()).hexdigest()[:12]}.cu"
    path.write_text(text)
    return path, env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1b", choices=sorted(SHAPES))
    ap.add_argument("--rows", default="1")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--variants", default="now,file=cuda/linear_pdl.cu")
    ap.add_argument("--rounds", type=int, default=2, help="the variants in turn, this many times")
    ap.add_argument("--results")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # set in the child process
    ap.add_argument("--lib", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        run_variant(args)
        return
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        libs, builds = {}, []
        for variant in variants:  # each source compiled once, all at the same time
            source, _ = source_for(variant, Path(scratch))  # the same text, the same path
            if source not in libs:
                libs[source] = Path(scratch) / f"chain-{len(libs)}.so"
                builds.append(subprocess.Popen(compile_command(source, libs[source])))
        if any(b.wait() for b in builds):
            raise SystemExit("compiling a variant failed (nvcc's message above)")
        for _ in range(args.rounds):
            for variant in variants:
                source, env = source_for(variant, Path(scratch))
                command = [sys.executable, __file__, "--variant", variant, "--lib", str(libs[source]),
                           "--shape", args.shape, "--rows", args.rows, "--runs", str(args.runs)]
                if args.results:
                    command += ["--results", args.results]
                subprocess.run(command, env={**os.environ, **env}, check=True)


if __name__ == "__main__":
    main()
