"""Our GEMV kernels as a decode step calls them: every projection of a Llama shape in one CUDA graph.

    python benchmarks/gpu_gemv_chain.py [--shape 1b] [--rows 1] [--weights fp16,int4] [--attention 256]
                                        [--variants now,...]

The product's runtime/custom_ops/linear.cu, compiled here behind a C entry point
(benchmarks/cuda/linear_chain.cu), called as `--passes custom-ops` engines call it at decode:
per layer NormLinear (q/k/v), Linear (o), NormLinearSwiGLU (gate/up), Linear (down), each with
its own weights, then the lm_head; the whole chain captured in one torch CUDA graph and replayed
(the attention between q/k/v and o is left out, o reading a fixed input, unless `--attention P`
puts each layer's CachedAttention there, runtime/custom_ops/attention.cu through
benchmarks/cuda/attention_entry.cu, over caches of P positions). `step` is one replay (the
kernels of one decode step, back to back); each projection (and the attention) alone is also
timed as a chain of its layers' copies. `weight_tb_s` counts the weight bytes. Variants
(benchmarks/_kernel_variants.py), each in its own process: `now` (the working tree's kernels),
`rev=REV` (linear.cu as of git revision REV) or `file=PATH` (another linear.cu), each followed by
`:NAME=VALUE` items setting a constant wherever linear.cu, linear_int4.cu, linear_common.cuh or
attention.cu define it or, as `env.VAR=VALUE`, an environment variable: `now:kProgrammatic=true:kPreload=2` (PDL in both families, a preload in linear.cu)
or `now:kTargetWarps=4096`. Each variant's outputs are checked against torch in fp32
(`max_abs_diff`). `--weights int4`: the same step through the LinearInt4 family (the variant's
linear_int4.cu) with random codes in onnxruntime-genai's format (symmetric blocks of 32, the
lm_head 4-bit too); `weight_tb_s` then counts codes and scales. Needs torch with CUDA and nvcc.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _kernel_variants import variant_sources
from _nvcc import nvcc_command
from _results import report_line
from gpu_attention_probe import SHAPES as ATTENTION_SHAPES, reference as attention_reference, rotary_tables
from gpu_gemv_probe import graph_times  # microseconds a replay of a captured launch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {name: {**dims, **ATTENTION_SHAPES[name]}  # and the attention's heads, kv_heads, head_dim
          for name, dims in (("1b", dict(hidden=2048, qkv=3072, inter=8192, vocab=128256)),
                             ("8b", dict(hidden=4096, qkv=6144, inter=14336, vocab=128256)))}
EPS = 1e-5
BLOCK = 32  # the 4-bit weights' quantization block (onnxruntime-genai's)


def compile_command(sources: Path, out: Path) -> list[str]:
    """nvcc for the Linear families' kernels in the folder `sources` (a variant's copy of
    runtime/custom_ops) and the chain's entry points."""
    return nvcc_command(out, [*(sources / name for name in ("linear.cu", "swiglu.cu", "linear_int4.cu", "attention.cu")),
                              *(ROOT / "benchmarks" / "cuda" / name for name in ("linear_chain.cu", "attention_entry.cu"))],
                        includes=[sources], libraries=["-ldl"])


def load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.chain_linear.argtypes = ([ctypes.c_void_p] * 6 + [ctypes.c_longlong] * 3 + [ctypes.c_float]
                                 + [ctypes.c_int] * 2 + [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int])
    lib.chain_linear_int4.argtypes = ([ctypes.c_void_p] * 8 + [ctypes.c_longlong] * 4 + [ctypes.c_float]
                                      + [ctypes.c_int] * 2 + [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int])
    lib.probe_attention.argtypes = ([ctypes.c_void_p] * 7 + [ctypes.c_longlong] * 7
                                    + [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int])
    return lib


class Chain:
    """Weights and buffers of every projection; `calls[kind]` the launches, in step order. With
    `positions`, each layer's CachedAttention too (runtime/custom_ops/attention.cu), between its
    q/k/v and o projections, over caches of that many positions (rows of `positions`,
    `positions` - 1, ...)."""

    def __init__(self, lib, shape: dict, rows: int, int4: bool = False, positions: int = 0):
        import torch

        self.lib, self.rows, self.int4, self.shape = lib, rows, int4, shape
        h, q, i, v, layers = shape["hidden"], shape["qkv"], shape["inter"], shape["vocab"], shape["layers"]
        dev, f16 = "cuda", torch.float16

        def weight(n, k):
            if int4:  # (codes (n, k / 32, 16) uint8, scales (n, k / 32) fp16): symmetric, zero point 8
                codes = torch.randint(0, 256, (n, k // BLOCK, BLOCK // 2), device=dev, dtype=torch.uint8)
                return codes, (torch.rand(n, k // BLOCK, device=dev) * 0.2 / k ** 0.5).to(f16)
            return torch.randn(n, k, device=dev, dtype=f16) * (1.0 / k ** 0.5)

        def act(k):
            return torch.randn(rows, k, device=dev, dtype=f16)

        self.hidden, self.skip, self.attn = act(h), act(h), act(h)
        self.calls: dict[str, list[tuple]] = {"qkv": [], "o": [], "gate_up": [], "down": [], "lm_head": []}
        if positions:
            self.calls["attention"] = []
            self.positions = positions
            self.lengths = torch.tensor([positions - r % 8 for r in range(rows)], dtype=torch.int32, device=dev)
            self.seqlens = self.lengths - 1
            self.cos, self.sin = (t.to(dev) for t in rotary_tables(positions + 1, shape["head_dim"]))
        x, skip = self.hidden, self.skip
        for _ in range(layers):
            gamma1, gamma2 = (1 + 0.1 * torch.randn(h, device=dev)).to(f16), (1 + 0.1 * torch.randn(h, device=dev)).to(f16)
            qkv_y, sum1 = act(q), act(h)
            self.calls["qkv"].append((x, skip, gamma1, weight(q, h), qkv_y, sum1, q, h, 1, 0))
            attn = self.attn
            if positions:  # caches (rows, kv_heads, positions, head_dim), the output o's input
                cache = (rows, shape["kv_heads"], positions, shape["head_dim"])
                attn = act(h)
                self.calls["attention"].append(("attention", qkv_y, torch.randn(cache, device=dev, dtype=f16),
                                                torch.randn(cache, device=dev, dtype=f16), attn))
            o_y = act(h)
            self.calls["o"].append((attn, None, None, weight(h, h), o_y, None, h, h, 0, 0))
            gu_y, sum2 = act(i), act(h)
            self.calls["gate_up"].append((o_y, sum1, gamma2, weight(2 * i, h), gu_y, sum2, i, h, 1, 1))
            down_y = act(h)
            self.calls["down"].append((gu_y, None, None, weight(h, i), down_y, None, h, i, 0, 0))
            x, skip = down_y, sum2
        self.calls["lm_head"].append((x, None, None, weight(v, h), act(v), None, v, h, 0, 0))
        kinds = ("qkv", "attention", "o", "gate_up", "down") if positions else ("qkv", "o", "gate_up", "down")
        self.step = [c for layer in zip(*(self.calls[k] for k in kinds)) for c in layer]
        self.step += self.calls["lm_head"]

    def launch(self, calls) -> None:
        import torch

        stream = torch.cuda.current_stream().cuda_stream
        error = ctypes.create_string_buffer(512)
        for call in calls:
            if call[0] == "attention":
                self.attend(call, stream, error)
                continue
            x, skip, gamma, w, y, s, n, k, norm, swiglu = call
            ptr = (lambda t: t.data_ptr() if t is not None else None)
            if self.int4:
                failed = self.lib.chain_linear_int4(ptr(x), ptr(skip), ptr(gamma), ptr(w[0]), ptr(w[1]), None, ptr(y),
                                                    ptr(s), self.rows, n, k, BLOCK, EPS, norm, swiglu, stream, error,
                                                    len(error))
            else:
                failed = self.lib.chain_linear(ptr(x), ptr(skip), ptr(gamma), ptr(w), ptr(y), ptr(s), self.rows, n, k,
                                               EPS, norm, swiglu, stream, error, len(error))
            if failed:
                raise RuntimeError(error.value.decode())

    def attend(self, call, stream, error) -> None:
        _, qkv, cache_k, cache_v, out = call
        sh = self.shape
        if self.lib.probe_attention(qkv.data_ptr(), cache_k.data_ptr(), cache_v.data_ptr(), self.seqlens.data_ptr(),
                                    self.cos.data_ptr(), self.sin.data_ptr(), out.data_ptr(), self.rows, 1,
                                    sh["heads"], sh["kv_heads"], sh["head_dim"], self.positions, self.positions + 1,
                                    stream, error, len(error)):
            raise RuntimeError(error.value.decode())

    def max_abs_diff(self, kind: str) -> float:
        """The first call of `kind` against torch in fp32."""
        import torch

        if kind == "attention":  # the positions before each row's last are as they were: its reference's
            _, qkv, cache_k, cache_v, out = self.calls[kind][0]
            self.launch([self.calls[kind][0]])
            torch.cuda.synchronize()
            want, _ = attention_reference(qkv[:, None], cache_k, cache_v, self.lengths, self.cos, self.sin, self.shape)
            return float((out.float() - want[:, 0]).abs().max())
        x, skip, gamma, w, y, s, n, k, norm, swiglu = self.calls[kind][0]
        self.launch([self.calls[kind][0]])
        torch.cuda.synchronize()
        h = x.float()
        if norm:
            h = h + skip.float()
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS) * gamma.float()
        out = h @ dequantized(w).t() if self.int4 else h @ w.float().t()
        if swiglu:
            out = torch.nn.functional.silu(out[:, :n]) * out[:, n:]
        return float((out - y.float()).abs().max())


def dequantized(weight):
    """(N, K) fp32 of 4-bit (codes, scales): the low nibble first, zero point 8."""
    import torch

    codes, scales = weight
    n, blocks, _ = codes.shape
    q = torch.stack([codes & 0xF, codes >> 4], dim=-1).reshape(n, blocks, BLOCK).float() - 8
    return (q * scales.float()[..., None]).reshape(n, blocks * BLOCK)


def weight_bytes(calls) -> int:
    """The weight bytes the calls read (attention calls read caches, not weights: none)."""
    return sum(sum(t.numel() * t.element_size() for t in (c[3] if isinstance(c[3], tuple) else (c[3],)))
               for c in calls if c[0] != "attention")


def run_variant(args) -> None:
    """In this process: load the variant's library, time the step and each projection."""
    import torch

    lib = load(Path(args.lib))
    for weights, rows in ((w, int(r)) for w in args.weights.split(",") for r in args.rows.split(",")):
        chain = Chain(lib, SHAPES[args.shape], rows, int4=weights == "int4", positions=args.attention)
        diffs = {kind: round(chain.max_abs_diff(kind), 5) for kind in chain.calls}
        for kind, calls in (("step", chain.step), *chain.calls.items()):
            times = graph_times(lambda: chain.launch(calls), args.runs)
            us, low, high = statistics.median(times), min(times), max(times)
            report_line({"variant": args.variant, "weights": weights, "shape": args.shape, "rows": rows,
                         "attention_positions": args.attention, "what": kind,
                         "calls": len(calls), "us": round(us, 2), "min_us": round(low, 2),
                         "max_us": round(high, 2), "weight_tb_s": round(weight_bytes(calls) / us / 1e6, 3),
                         "max_abs_diff": diffs.get(kind, max(diffs.values()))}, args.results)
        del chain
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1b", choices=sorted(SHAPES))
    ap.add_argument("--rows", default="1")
    ap.add_argument("--weights", default="fp16", help="fp16, int4 or both (the LinearInt4 family)")
    ap.add_argument("--attention", type=int, default=0,
                    help="each layer's CachedAttention too, over this many positions (0: the GEMVs alone)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--variants", default="now,now:kProgrammatic=true")
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
        for variant in variants:  # each variant's sources compiled once, all at the same time
            sources, _ = variant_sources(variant, Path(scratch))
            if sources not in libs:
                libs[sources] = Path(scratch) / f"chain-{len(libs)}.so"
                builds.append(subprocess.Popen(compile_command(sources, libs[sources])))
        if any(b.wait() for b in builds):
            raise SystemExit("compiling a variant failed (nvcc's message above)")
        for _ in range(args.rounds):
            for variant in variants:
                sources, env = variant_sources(variant, Path(scratch))
                command = [sys.executable, __file__, "--variant", variant, "--lib", str(libs[sources]),
                           "--shape", args.shape, "--rows", args.rows, "--weights", args.weights,
                           "--runs", str(args.runs), "--attention", str(args.attention)]
                if args.results:
                    command += ["--results", args.results]
                subprocess.run(command, env={**os.environ, **env}, check=True)


if __name__ == "__main__":
    main()
