"""The decoder's building blocks as ONNX subgraphs, in their plain (unfused) form.

Each function documents the exact op pattern it emits: the fusion passes match these
patterns, so a change here is a change to their contract. Shapes: B batch, S new tokens,
T = past + S, H hidden, nH / nKV query / kv heads, R = nH / nKV, hd head dim, V vocab.

Numerics follow transformers' eager implementations: norms, softmax and RoPE tables in
fp32 whatever the engine dtype, queries pre-scaled before QK^T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx_ir as ir

from optimizer.graph import GraphBuilder

F32 = ir.DataType.FLOAT
I64 = np.int64
Weight = np.ndarray | ir.LazyTensor  # an initializer's contents: in memory, or read when written


@dataclass
class Context:
    b: GraphBuilder
    dims: Any  # capture.DecoderDims
    arch: Any  # ArchSpec
    dtype: ir.DataType  # engine compute dtype
    np_dtype: type

    def to_compute(self, x: ir.Value) -> ir.Value:
        return x if self.dtype == F32 else self.b.op("Cast", x, to=self.dtype)

    def to_f32(self, x: ir.Value) -> ir.Value:
        return x if self.dtype == F32 else self.b.op("Cast", x, to=F32)


def rms_norm(ctx: Context, x: ir.Value, weight: np.ndarray, name: str) -> ir.Value:
    """x * 1/sqrt(mean(x^2, -1) + eps) * (w + offset), in fp32:
    [Cast] Pow(2) ReduceMean(-1) Add(eps) Sqrt Reciprocal Mul(x) Mul(w) [Cast]."""
    b = ctx.b
    xf = ctx.to_f32(x)
    mean_sq = b.op("ReduceMean", b.op("Pow", xf, b.const(2.0, np.float32)), b.const([-1], I64), keepdims=1)
    inv_rms = b.op("Reciprocal", b.op("Sqrt", b.op("Add", mean_sq, b.const(ctx.dims.rms_norm_eps, np.float32))))
    scale = (weight.astype(np.float32) + np.float32(ctx.arch.norm_weight_offset)).astype(np.float32)
    y = b.op("Mul", b.op("Mul", xf, inv_rms), b.weight(name + ".weight", scale))
    return ctx.to_compute(y)


def linear(ctx: Context, x: ir.Value, weight: tuple[str, Weight, np.ndarray | None]) -> ir.Value:
    """MatMul(x, W^T) [+ bias]; the initializer is named `<module>.weight` and holds W^T (in, out),
    in the engine dtype."""
    name, weight_t, bias = weight
    y = ctx.b.op("MatMul", x, ctx.b.weight(name + ".weight", weight_t))
    if bias is not None:
        y = ctx.b.op("Add", y, ctx.b.weight(name + ".bias", bias.astype(ctx.np_dtype, copy=False)))
    return y


def embed(ctx: Context, input_ids: ir.Value, table: Weight) -> ir.Value:
    """Gather(table, ids) -> (B, S, H), times sqrt(H) where the architecture scales embeddings
    (the table in the engine dtype)."""
    b = ctx.b
    x = b.op("Gather", b.weight(ctx.arch.embed, table), input_ids, axis=0)
    if ctx.arch.embed_scale:
        scale = np.asarray(np.float32(ctx.dims.hidden_size ** 0.5)).astype(ctx.np_dtype)
        x = b.op("Mul", x, b.const(scale))
    return x


def lm_head(ctx: Context, x: ir.Value, head: tuple[str, Weight | None, bool]) -> ir.Value:
    """(B, S, H) -> logits (B, S, V) fp32; the weight is W^T (H, V) in the engine dtype. A tied
    head reuses the embedding initializer through Transpose (onnxruntime folds it at load), so
    the engine stores it once."""
    b = ctx.b
    name, weight, tied = head
    if tied:
        table = next(v for v in b.tape.initializers if v.name == name)
        logits = b.op("MatMul", x, b.op("Transpose", table, perm=[1, 0]))
    else:
        logits = b.op("MatMul", x, b.weight(name, weight))
    logits = ctx.to_f32(logits)
    cap = ctx.dims.final_logit_softcap
    if cap:
        logits = b.op("Mul", b.op("Tanh", b.op("Div", logits, b.const(cap, np.float32))), b.const(cap, np.float32))
    return logits


def attention_masks(ctx: Context, input_ids: ir.Value, attention_mask: ir.Value,
                    windows: set[int | None]) -> dict[int | None, ir.Value]:
    """Boolean masks (B, 1, 1, S, T), one per window size (None = global causal).

    Query i sits at cache index q = T - S + i; key j is visible when j <= q, the mask marks
    j as a real token, and (sliding window W) q - j < W, as in transformers' masking_utils."""
    b = ctx.b
    seq = b.op("Squeeze", b.op("Shape", input_ids, start=1, end=2), b.const([0], I64))
    total = b.op("Squeeze", b.op("Shape", attention_mask, start=1, end=2), b.const([0], I64))
    q_idx = b.op("Range", b.op("Sub", total, seq), total, b.const(1, I64))  # (S,)
    kv_idx = b.op("Range", b.const(0, I64), total, b.const(1, I64))  # (T,)
    diff = b.op("Sub", b.op("Unsqueeze", q_idx, b.const([1], I64)),
                b.op("Unsqueeze", kv_idx, b.const([0], I64)))  # (S, T): q - j
    causal = b.op("GreaterOrEqual", diff, b.const(0, I64))
    real = b.op("Unsqueeze", b.op("Cast", attention_mask, to=ir.DataType.BOOL), b.const([1, 2, 3], I64))  # (B,1,1,1,T)
    base = b.op("And", causal, real)  # (B, 1, 1, S, T)
    masks: dict[int | None, ir.Value] = {}
    for window in windows:
        masks[window] = base if window is None else b.op("And", base, b.op("Less", diff, b.const(window, I64)))
    return masks


def rotary_tables(ctx: Context, position_ids: ir.Value, inv_freq: np.ndarray,
                  scaling: float) -> tuple[ir.Value, ir.Value]:
    """cos, sin (B, 1, S, hd) in the compute dtype: freqs = pos * inv_freq, emb = [freqs, freqs]."""
    b = ctx.b
    pos = b.op("Unsqueeze", b.op("Cast", position_ids, to=F32), b.const([-1], I64))  # (B, S, 1)
    freqs = b.op("Mul", pos, b.const(inv_freq.astype(np.float32)))  # (B, S, hd/2)
    emb = b.op("Concat", freqs, freqs, axis=-1)  # (B, S, hd)
    tables = []
    for fn in ("Cos", "Sin"):
        t = b.op(fn, emb)
        if scaling != 1.0:
            t = b.op("Mul", t, b.const(scaling, np.float32))
        tables.append(b.op("Unsqueeze", ctx.to_compute(t), b.const([1], I64)))  # (B, 1, S, hd)
    return tables[0], tables[1]


def apply_rotary(ctx: Context, x: ir.Value, cos: ir.Value, sin: ir.Value) -> ir.Value:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]: Split Neg Concat Mul Mul Add."""
    b = ctx.b
    x1, x2 = b.op_multi("Split", x, num_outputs=2, axis=-1, attr_num_outputs=2)
    rotated = b.op("Concat", b.op("Neg", x2), x1, axis=-1)
    return b.op("Add", b.op("Mul", x, cos), b.op("Mul", rotated, sin))


def attention(ctx: Context, x: ir.Value, lw: Any, past: tuple[ir.Value, ir.Value],
              mask: ir.Value, rope: tuple[ir.Value, ir.Value]) -> tuple[ir.Value, ir.Value, ir.Value]:
    """Grouped-query attention with a concatenated KV cache. Returns (out, present_k, present_v).

    Queries are viewed as (B, nKV, R, S, hd) so that every group broadcasts against its
    kv head (B, nKV, 1, T, hd) in MatMul: no repeat_kv copy of the cache."""
    b, d, arch = ctx.b, ctx.dims, ctx.arch
    rep = d.num_heads // d.num_kv_heads
    q = linear(ctx, x, lw.linear("q"))  # (B, S, nH*hd)
    k = linear(ctx, x, lw.linear("k"))  # (B, S, nKV*hd)
    v = linear(ctx, x, lw.linear("v"))
    q = b.op("Transpose", b.op("Reshape", q, b.const([0, 0, d.num_kv_heads, rep, d.head_dim], I64)),
             perm=[0, 2, 3, 1, 4])  # (B, nKV, R, S, hd)
    k = b.op("Transpose", b.op("Reshape", k, b.const([0, 0, d.num_kv_heads, d.head_dim], I64)),
             perm=[0, 2, 1, 3])  # (B, nKV, S, hd)
    v = b.op("Transpose", b.op("Reshape", v, b.const([0, 0, d.num_kv_heads, d.head_dim], I64)),
             perm=[0, 2, 1, 3])  # (B, nKV, S, hd)
    if arch.qk_norm:
        q = rms_norm(ctx, q, lw.norm(arch.qk_norm_names[0]), lw.prefix + arch.qk_norm_names[0])
        k = rms_norm(ctx, k, lw.norm(arch.qk_norm_names[1]), lw.prefix + arch.qk_norm_names[1])
    cos, sin = rope  # (B, 1, S, hd)
    five_d = b.const([2], I64)
    q = apply_rotary(ctx, q, b.op("Unsqueeze", cos, five_d), b.op("Unsqueeze", sin, five_d))
    k = apply_rotary(ctx, k, cos, sin)
    present_k = b.op("Concat", past[0], k, axis=2)  # (B, nKV, T, hd)
    present_v = b.op("Concat", past[1], v, axis=2)
    q = b.op("Mul", q, b.const(np.asarray(d.attention_scale, dtype=np.float32).astype(ctx.np_dtype)))
    k_t = b.op("Unsqueeze", b.op("Transpose", present_k, perm=[0, 1, 3, 2]), five_d)  # (B, nKV, 1, hd, T)
    scores = ctx.to_f32(b.op("MatMul", q, k_t))  # (B, nKV, R, S, T)
    if d.attn_logit_softcap:
        cap = b.const(d.attn_logit_softcap, np.float32)
        scores = b.op("Mul", b.op("Tanh", b.op("Div", scores, cap)), cap)
    scores = b.op("Where", mask, scores, b.const(np.finfo(np.float32).min, np.float32))
    probs = ctx.to_compute(b.op("Softmax", scores, axis=-1))
    out = b.op("MatMul", probs, b.op("Unsqueeze", present_v, five_d))  # (B, nKV, R, S, hd)
    out = b.op("Reshape", b.op("Transpose", out, perm=[0, 3, 1, 2, 4]),
               b.const([0, 0, d.num_heads * d.head_dim], I64))  # (B, S, nH*hd)
    return linear(ctx, out, lw.linear("o")), present_k, present_v


def _silu(b: GraphBuilder, x: ir.Value) -> ir.Value:
    return b.op("Mul", x, b.op("Sigmoid", x))


def _gelu_tanh(b: GraphBuilder, x: ir.Value) -> ir.Value:
    return b.op("Gelu", x, approximate="tanh")


def _gelu(b: GraphBuilder, x: ir.Value) -> ir.Value:
    return b.op("Gelu", x)


ACTIVATIONS: dict[str, Callable[[GraphBuilder, ir.Value], ir.Value]] = {
    "silu": _silu,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_new": _gelu_tanh,
    "gelu": _gelu,
}


def mlp(ctx: Context, x: ir.Value, lw: Any) -> ir.Value:
    """down(act(gate(x)) * up(x))."""
    gate = ACTIVATIONS[ctx.dims.activation](ctx.b, linear(ctx, x, lw.linear("gate")))
    return linear(ctx, ctx.b.op("Mul", gate, linear(ctx, x, lw.linear("up"))), lw.linear("down"))


def decoder_layer(ctx: Context, x: ir.Value, lw: Any, past: tuple[ir.Value, ir.Value],
                  mask: ir.Value, rope: tuple[ir.Value, ir.Value]) -> tuple[ir.Value, ir.Value, ir.Value]:
    """Pre-norm residual layer; sandwich norms (Gemma) where the architecture has them."""
    norms = ctx.arch.norms
    h = rms_norm(ctx, x, lw.norm(norms.attn_in), lw.prefix + norms.attn_in)
    h, present_k, present_v = attention(ctx, h, lw, past, mask, rope)
    if norms.attn_out:
        h = rms_norm(ctx, h, lw.norm(norms.attn_out), lw.prefix + norms.attn_out)
    x = ctx.b.op("Add", x, h)
    h = rms_norm(ctx, x, lw.norm(norms.mlp_in), lw.prefix + norms.mlp_in)
    h = mlp(ctx, h, lw)
    if norms.mlp_out:
        h = rms_norm(ctx, h, lw.norm(norms.mlp_out), lw.prefix + norms.mlp_out)
    return ctx.b.op("Add", x, h), present_k, present_v
