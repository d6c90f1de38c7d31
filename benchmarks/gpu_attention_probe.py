"""Our CachedAttention kernel at decode, checked against torch and timed per layer.

    python benchmarks/gpu_attention_probe.py [--shapes 1b,8b] [--batches 1,64] [--lengths 128,256,512,1024]
                                             [--prefills 128,2048,128x64] [--variants now,now:kMmaPrefillTokens=0]
                                             [--decode-variants now,now:kMmaDecodeBlocks=0] [--calls 4x64@256]

The product's runtime/custom_ops/attention.cu, compiled here behind a C entry point
(benchmarks/cuda/attention_entry.cu) and called as a custom-ops engine's decode step calls it: packed
q/k/v of one new token a row, each layer's own (batch, kv_heads, capacity, head_dim) caches written in
place, rows of L, L - 1, ... L - 7 positions; and first prefills of S tokens at batch 1 (or B rows of S:
`--prefills SxB`), and decode calls of S new tokens in B rows of L positions (speculative decoding's
verification calls: `--calls SxB@L`). The prefills from attention.cu's kMmaPrefillTokens new tokens on
run attention_mma.cuh's tensor-core kernel (`--variants now,now:kMmaPrefillTokens=0`: against the
CUDA-core kernel before it, blocks of kPrefillQueries new tokens). First its output and the keys and
values it wrote are checked against torch in fp32 (rotary, the new tokens appended, causal GQA
attention: `max_abs_diff`, `cache_diff`); then one call per layer is captured in a torch CUDA graph and
replayed: `us` a layer (median of --runs replays), `cache_tb_s` the cache bytes the rows hold over that
time. `torch_sdpa_us`: torch's scaled_dot_product_attention over the same caches (the attention alone,
no rotary or append; causal for prefills), for reference. onnxruntime's GroupQueryAttention took four
kernels and ~9 us a layer at the 1B shape, batch 1 (run13). `--variants`: the prefills also through
kernels with constants set (attention.cu's kPrefillQueries: new tokens a block takes, sharing the keys
and values its warps read; kMmaPrefillTokens=0: no tensor-core prefill); `--decode-variants`: the decode
steps through them (kGroupQueries: a block per kv group's query heads at large grids, each key and value
row read once a group; kMmaDecodeBlocks=0: no tensor-core decode). Needs torch with CUDA and nvcc. One
JSON line per (variant, shape, batch, new tokens, length).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _nvcc import compile_library
from _results import report_line
from _kernel_variants import variant_sources  # a variant's copy of the kernels, constants set
from gpu_gemv_probe import graph_times  # microseconds a replay of a captured launch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"1b": dict(heads=32, kv_heads=8, head_dim=64, layers=16),
          "8b": dict(heads=32, kv_heads=8, head_dim=128, layers=32)}
THETA = 500000.0


def build(sources: Path, out: Path) -> ctypes.CDLL:
    """The kernel of `sources` (a variant's copy of runtime/custom_ops) behind the probe's entry point."""
    lib = compile_library(out, [sources / "attention.cu", ROOT / "benchmarks" / "cuda" / "attention_entry.cu"],
                          includes=[sources])
    lib.probe_attention.argtypes = ([ctypes.c_void_p] * 7 + [ctypes.c_longlong] * 7
                                    + [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int])
    return lib


def rotary_tables(positions: int, head_dim: int):
    import torch

    inv = THETA ** (-torch.arange(0, head_dim // 2, dtype=torch.float64) / (head_dim // 2))
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * inv[None]
    return angles.cos().half(), angles.sin().half()


def rotate(x, cos, sin):
    """x (..., hd) at the rows' positions: the half-split rotary, in fp32, rounded to float16."""
    import torch

    half = x.shape[-1] // 2
    first, second = x[..., :half].float(), x[..., half:].float()
    c, s = cos.float(), sin.float()
    return torch.cat([first * c - second * s, second * c + first * s], dim=-1).half()


def reference(qkv, cache_k, cache_v, lengths, cos, sin, shape):
    """torch's output (B, S, heads * hd) and the rotated new keys (B, S, kv, hd) of a call with S
    new tokens a row, rows of `lengths` positions after it, for the caches as they were before."""
    import torch

    h, kv, hd = shape["heads"], shape["kv_heads"], shape["head_dim"]
    batch, seq = qkv.shape[:2]
    out = torch.empty(batch, seq, h * hd, device=qkv.device)
    new_keys = []
    for b in range(batch):
        n = int(lengths[b])
        past = n - seq
        pos = torch.arange(past, n, device=qkv.device)
        c, s = cos[pos][:, None], sin[pos][:, None]
        q = rotate(qkv[b, :, :h * hd].view(seq, h, hd), c, s)
        k = rotate(qkv[b, :, h * hd:(h + kv) * hd].view(seq, kv, hd), c, s)
        v = qkv[b, :, (h + kv) * hd:].view(seq, kv, hd)
        new_keys.append(k)
        keys = torch.cat([cache_k[b, :, :past], k.transpose(0, 1)], dim=1).float()  # (kv, n, hd)
        values = torch.cat([cache_v[b, :, :past], v.transpose(0, 1)], dim=1).float()
        keys, values = keys.repeat_interleave(h // kv, 0), values.repeat_interleave(h // kv, 0)
        scores = q.transpose(0, 1).float() @ keys.transpose(1, 2) / hd ** 0.5  # (h, S, n)
        causal = torch.arange(n, device=qkv.device)[None] > pos[:, None]  # key after the query
        scores.masked_fill_(causal[None], float("-inf"))
        out[b] = (scores.softmax(-1) @ values).transpose(0, 1).reshape(seq, h * hd)
    return out, torch.stack(new_keys)


def measure(lib, name: str, batch: int, seq: int, length: int, runs: int) -> dict:
    """One configuration: rows of `length`, `length` - 1, ... `length` - 7 positions after a call
    of `seq` new tokens each (a decode step: seq 1), or a first prefill of `seq` = `length` tokens
    in each of `batch` rows; each layer its own caches of `length` positions."""
    import torch

    shape = SHAPES[name]
    h, kv, hd, layers = shape["heads"], shape["kv_heads"], shape["head_dim"], shape["layers"]
    error = ctypes.create_string_buffer(512)
    capacity = length
    cos, sin = (t.cuda() for t in rotary_tables(capacity + 1, hd))
    lengths = torch.tensor([length - (r % 8 if seq == 1 else 0) for r in range(batch)], dtype=torch.int32,
                           device="cuda")
    seqlens = lengths - 1
    qkv = [torch.randn(batch, seq, (h + 2 * kv) * hd, device="cuda").half() for _ in range(layers)]
    caches = [(torch.randn(batch, kv, capacity, hd, device="cuda").half(),
               torch.randn(batch, kv, capacity, hd, device="cuda").half()) for _ in range(layers)]
    outs = [torch.empty(batch, seq, h * hd, device="cuda").half() for _ in range(layers)]
    before = (caches[0][0].clone(), caches[0][1].clone())

    def launch():
        stream = torch.cuda.current_stream().cuda_stream
        for x, (k, v), y in zip(qkv, caches, outs):
            if lib.probe_attention(x.data_ptr(), k.data_ptr(), v.data_ptr(), seqlens.data_ptr(), cos.data_ptr(),
                                   sin.data_ptr(), y.data_ptr(), batch, seq, h, kv, hd, capacity, capacity + 1,
                                   stream, error, len(error)):
                raise RuntimeError(error.value.decode())

    launch()
    torch.cuda.synchronize()
    want, new_k = reference(qkv[0], *before, lengths, cos, sin, shape)
    diff = float((outs[0].float() - want).abs().max())
    cache_diff = 0.0
    for b in range(batch):
        written = slice(int(lengths[b]) - seq, int(lengths[b]))
        new_v = qkv[0][b, :, (h + kv) * hd:].view(seq, kv, hd).transpose(0, 1)
        cache_diff = max(cache_diff, float((caches[0][0][b, :, written] - new_k[b].transpose(0, 1)).abs().max()),
                         float((caches[0][1][b, :, written] - new_v).abs().max()))
    us = statistics.median(graph_times(launch, runs)) / layers
    queries = [x[:, :, :h * hd].view(batch, seq, h, hd).transpose(1, 2) for x in qkv]

    def launch_sdpa():
        for q, (k, v) in zip(queries, caches):
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=seq == length, enable_gqa=True)

    sdpa_us = statistics.median(graph_times(launch_sdpa, runs)) / layers
    held = int(lengths.sum()) * kv * hd * 2 * 2  # K and V bytes the rows hold
    return {"shape": name, "batch": batch, "seq": seq, "length": length, "us": round(us, 2),
            "cache_tb_s": round(held / us / 1e6, 3), "torch_sdpa_us": round(sdpa_us, 2),
            "max_abs_diff": diff, "cache_diff": cache_diff}


def configurations(args) -> list[tuple[list[str], int, int, int]]:
    """(variants, batch, new tokens, length) of each call a shape is measured at, in order: the decode
    steps, the verification calls (SxB@L), the first prefills (S or SxB)."""
    def items(text: str) -> list[str]:
        return [item for item in text.split(",") if item]

    decode, prefill = args.decode_variants.split(","), args.variants.split(",")
    out = [(decode, batch, 1, length)
           for batch in map(int, items(args.batches)) for length in map(int, items(args.lengths))]
    for item in items(args.calls):
        tokens, _, length = item.partition("@")
        seq, _, rows = tokens.partition("x")
        out.append((decode, int(rows or 1), int(seq), int(length)))
    for item in items(args.prefills):
        seq, _, rows = item.partition("x")
        out.append((prefill, int(rows or 1), int(seq), int(seq)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1b,8b")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--lengths", default="128,256,512,1024")
    ap.add_argument("--prefills", default="128,2048",
                    help="first prefills of this many tokens, batch 1 (SxB: S tokens in each of B rows)")
    ap.add_argument("--calls", default="",
                    help="decode calls of several new tokens (verification's), SxB@L: S new tokens in each of B "
                         "rows of L positions after the call, through --decode-variants")
    ap.add_argument("--variants", default="now",
                    help="kernel variants for the prefills (_kernel_variants.py's: now[:NAME=VALUE...])")
    ap.add_argument("--decode-variants", default="now", help="kernel variants for the decode steps")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--results")
    args = ap.parse_args()
    calls = configurations(args)
    with tempfile.TemporaryDirectory() as scratch:
        every = list(dict.fromkeys(variant for chosen, *_ in calls for variant in chosen))
        sources = [variant_sources(variant, Path(scratch))[0] for variant in every]
        with ThreadPoolExecutor() as pool:  # nvcc runs in parallel, a variant each
            built = pool.map(build, sources, [Path(scratch) / f"attention-{i}.so" for i in range(len(every))])
            libs = dict(zip(every, built))
        for name in args.shapes.split(","):
            for chosen, batch, seq, length in calls:
                for variant in chosen:
                    row = measure(libs[variant], name, batch, seq, length, args.runs)
                    report_line({"variant": variant, **row}, args.results)


if __name__ == "__main__":
    main()
