"""Our CachedAttention kernel at decode, checked against torch and timed per layer.

    python benchmarks/gpu_attention_probe.py [--shapes 1b,8b] [--batches 1,64] [--lengths 128,256,512,1024]

The product's runtime/custom_ops/attention.cu, compiled here behind a C entry point
(benchmarks/cuda/attention_entry.cu) and called as a custom-ops engine's decode step calls it:
packed q/k/v of one new token a row, each layer's own (batch, kv_heads, capacity, head_dim) caches
written in place, rows of L, L - 1, ... L - 7 positions. First its output and the key and value it
wrote are checked against torch in fp32 (rotary, the new token appended, GQA attention:
`max_abs_diff`, `cache_diff`); then one call per layer is captured in a torch CUDA graph and
replayed: `us` a layer (median of --runs replays), `cache_tb_s` the cache bytes the rows hold
over that time. `torch_sdpa_us`: torch's scaled_dot_product_attention over the same caches (the
attention alone, no rotary or append), for reference. onnxruntime's GroupQueryAttention took four
kernels and ~9 us a layer at the 1B shape, batch 1 (run13). Needs torch with CUDA and nvcc. One
JSON line per (shape, batch, length).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _results import report_line
from gpu_gemv_probe import graph_times  # microseconds a replay of a captured launch

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "runtime" / "custom_ops"
SHAPES = {"1b": dict(heads=32, kv_heads=8, head_dim=64, layers=16),
          "8b": dict(heads=32, kv_heads=8, head_dim=128, layers=32)}
THETA = 500000.0


def build(folder: Path) -> ctypes.CDLL:
    sys.path.insert(0, str(ROOT))
    from runtime.custom_ops import find_nvcc

    nvcc = find_nvcc()
    if nvcc is None:
        raise SystemExit("the probe needs nvcc (PATH, $CUDA_HOME/bin or /usr/local/cuda/bin)")
    out = folder / "attention_probe.so"
    subprocess.run([nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-shared", f"-I{OPS}",
                    "-gencode=arch=compute_90,code=sm_90", "-o", str(out), str(OPS / "attention.cu"),
                    str(ROOT / "benchmarks" / "cuda" / "attention_entry.cu")], check=True)
    lib = ctypes.CDLL(str(out))
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
    """torch's output (B, heads * hd) and the rotated new keys (B, kv, hd) for the caches as they
    were before the call."""
    import torch

    h, kv, hd = shape["heads"], shape["kv_heads"], shape["head_dim"]
    batch = qkv.shape[0]
    pos = lengths.long() - 1
    q = qkv[:, 0, :h * hd].view(batch, h, hd)
    k = qkv[:, 0, h * hd:(h + kv) * hd].view(batch, kv, hd)
    v = qkv[:, 0, (h + kv) * hd:].view(batch, kv, hd)
    q, k = rotate(q, cos[pos][:, None], sin[pos][:, None]), rotate(k, cos[pos][:, None], sin[pos][:, None])
    out = torch.empty(batch, h * hd, device=qkv.device)
    for b in range(batch):
        n = int(lengths[b])
        keys = torch.cat([cache_k[b, :, :n - 1], k[b][:, None]], dim=1).float()  # (kv, n, hd)
        values = torch.cat([cache_v[b, :, :n - 1], v[b][:, None]], dim=1).float()
        keys, values = keys.repeat_interleave(h // kv, 0), values.repeat_interleave(h // kv, 0)
        scores = (q[b].float()[:, None] @ keys.transpose(1, 2))[:, 0] / hd ** 0.5  # (h, n)
        out[b] = (scores.softmax(-1)[:, None] @ values)[:, 0].reshape(-1)
    return out, k


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1b,8b")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--lengths", default="128,256,512,1024")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--results")
    args = ap.parse_args()
    error = ctypes.create_string_buffer(512)
    with tempfile.TemporaryDirectory() as scratch:
        lib = build(Path(scratch))
        for name in args.shapes.split(","):
            shape = SHAPES[name]
            h, kv, hd, layers = shape["heads"], shape["kv_heads"], shape["head_dim"], shape["layers"]
            for batch in (int(b) for b in args.batches.split(",")):
                for length in (int(n) for n in args.lengths.split(",")):
                    capacity = length
                    cos, sin = (t.cuda() for t in rotary_tables(capacity + 1, hd))
                    lengths = torch.tensor([length - r % 8 for r in range(batch)], dtype=torch.int32, device="cuda")
                    seqlens = lengths - 1
                    qkv = [torch.randn(batch, 1, (h + 2 * kv) * hd, device="cuda").half() for _ in range(layers)]
                    caches = [(torch.randn(batch, kv, capacity, hd, device="cuda").half(),
                               torch.randn(batch, kv, capacity, hd, device="cuda").half()) for _ in range(layers)]
                    outs = [torch.empty(batch, 1, h * hd, device="cuda").half() for _ in range(layers)]
                    before = (caches[0][0].clone(), caches[0][1].clone())

                    def launch():
                        stream = torch.cuda.current_stream().cuda_stream
                        for x, (k, v), y in zip(qkv, caches, outs):
                            if lib.probe_attention(x.data_ptr(), k.data_ptr(), v.data_ptr(), seqlens.data_ptr(),
                                                   cos.data_ptr(), sin.data_ptr(), y.data_ptr(), batch, 1, h, kv, hd,
                                                   capacity, capacity + 1, stream, error, len(error)):
                                raise RuntimeError(error.value.decode())

                    launch()
                    torch.cuda.synchronize()
                    want, new_k = reference(qkv[0], *before, lengths, cos, sin, shape)
                    diff = float((outs[0][:, 0].float() - want).abs().max())
                    rows = torch.arange(batch, device="cuda")
                    written_k = caches[0][0][rows, :, lengths.long() - 1]  # (B, kv, hd)
                    written_v = caches[0][1][rows, :, lengths.long() - 1]
                    new_v = qkv[0][:, 0, (h + kv) * hd:].view(batch, kv, hd)
                    cache_diff = max(float((written_k.float() - new_k.float()).abs().max()),
                                     float((written_v.float() - new_v.float()).abs().max()))
                    us = statistics.median(graph_times(launch, args.runs)) / layers
                    queries = [x[:, 0, :h * hd].view(batch, h, 1, hd) for x in qkv]

                    def launch_sdpa():
                        for q, (k, v) in zip(queries, caches):
                            torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)

                    sdpa_us = statistics.median(graph_times(launch_sdpa, args.runs)) / layers
                    held = int(lengths.sum()) * kv * hd * 2 * 2  # K and V bytes the rows hold
                    report_line({"shape": name, "batch": batch, "length": length, "us": round(us, 2),
                                 "cache_tb_s": round(held / us / 1e6, 3), "torch_sdpa_us": round(sdpa_us, 2),
                                 "max_abs_diff": diff, "cache_diff": cache_diff}, args.results)


if __name__ == "__main__":
    main()
