"""Render an engine manifest for people (`optimize inspect`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from optimizer.core.engine_format import IN_PLACE_ATTENTION, KvCacheSpec


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def kv_summary(kv: KvCacheSpec) -> str:
    per_layer = f"{kv.num_layers} layers x K/V {kv.dtype}"
    if kv.layout == "static":
        return (f"static layout: {kv.slots} slots x {kv.slot_capacity} positions, {per_layer} "
                f"({kv.slots}, {kv.num_kv_heads}, {kv.slot_capacity}, {kv.head_dim}), written in place")
    if kv.layout == "paged":
        return (f"paged layout: {kv.num_blocks} blocks x {kv.block_size} tokens, {per_layer} "
                f"({kv.num_blocks}, {kv.block_size}, {kv.num_kv_heads}, {kv.head_dim}), {kv.slots} sequences")
    return f"concat layout, {per_layer} (B, {kv.num_kv_heads}, T, {kv.head_dim})"


def precision_notes(m: dict[str, Any]) -> list[str]:
    """What a user should know about how this engine runs where."""
    notes = []
    quant = m["quantization"]
    if quant.get("method") == "fp8" and quant.get("provider") == "cuda":
        notes.append("FP8 W8A8 in onnxruntime's CUDA kernel MatMulBlockQuantizedFp8Weight: this engine "
                     "runs on the CUDA provider only (--provider cuda)")
    elif quant.get("provider") == "cuda":
        notes.append(f"{quant.get('format')}: this engine runs on the CUDA provider only (--provider cuda)")
    elif quant.get("method") == "fp8":
        notes.append("FP8 W8A8 as QuantizeLinear/DequantizeLinear: onnxruntime's CPU runs it unfused "
                     "(dequantize, then a float MatMul), correct but slower than the fp32 engine; FP8 GEMM "
                     "speed needs a GPU with FP8 (TensorRT, or onnxruntime CUDA on sm89+)")
    if "distillation" in quant:
        d = quant["distillation"]
        notes.append(f"FP8 weights fine-tuned against the float model after calibration: {d['steps']} steps of "
                     f"{d['batch']} windows of {d['data']['spec']} on {d['device']}, KL to the float model "
                     f"{d['kl_first_steps']:.4f} -> {d['kl_last_steps']:.4f}")
    if m["kv_cache"].get("dtype") == "int8":
        notes.append("int8 KV cache (one static scale per layer for K and V): onnxruntime's CPU attention "
                     "kernel reads it; this engine runs on the CPU provider only")
    if m.get("target") == "tensorrt":
        trt = m.get("tensorrt", {})
        notes.append(f"target tensorrt: standard ONNX ops only (opset {trt.get('onnx_opset')}), "
                     f"{len(trt.get('profiles', []))} optimization profiles; build a plan with "
                     "`optimize build-trt ENGINE --out ENGINE/model.plan`; onnxruntime runs it as is")
    return notes


def render_manifest(m: dict[str, Any], path: Path, console: Console | None = None) -> None:
    out = console or Console(highlight=False)
    cfg = m["architecture"]["config"]
    kv = KvCacheSpec.from_manifest(m["kv_cache"], m["format_version"])
    src = m["source"]
    total = sum(f["size"] for f in m["files"].values())
    out.print(f"[bold]engine[/bold] {path}  (format v{m['format_version']}, "
              f"{m['tool']['name']} {m['tool']['version']}, {m.get('created_at', '?')})")
    where = src.get("path") or f"preset/config {src.get('config')} (seed {src.get('seed')})"
    out.print(f"[bold]source[/bold]       {src['kind']}: {where}")
    for f in src.get("files", []):
        out.print(f"             {f['name']}  sha256 {f['sha256'][:16]}...")
    windows = sorted({w for w in kv.sliding_windows if w})
    out.print(f"[bold]architecture[/bold] {m['architecture']['name']} ({m['architecture']['model_type']}): "
              f"{cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, "
              f"{cfg['num_attention_heads']} heads / {cfg['num_key_value_heads']} kv heads, "
              f"head_dim {kv.head_dim}, vocab {cfg['vocab_size']}"
              + (f", sliding window {windows}" if windows else ""))
    quant = m["quantization"]
    out.print(f"[bold]dtype[/bold]        {m['dtype']}   [bold]quantization[/bold] "
              + ", ".join(f"{k}={v}" for k, v in quant.items()))
    for line in precision_notes(m):
        out.print(f"[bold]note[/bold]         {line}")
    out.print(f"[bold]kv cache[/bold]     {kv_summary(kv)}")
    if kv.attention in IN_PLACE_ATTENTION:
        mine = " (optimizer.ops, GroupQueryAttention's contract)" if kv.attention == "CachedAttention" else ""
        out.print(f"[bold]attention[/bold]    {kv.attention}{mine}: right-padded batches, up to "
                  f"{kv.max_sequence_length} positions")
    elif kv.attention == "PagedAttention":
        out.print(f"[bold]attention[/bold]    PagedAttention: packed tokens, no padding, up to "
                  f"{kv.max_sequence_length} positions; CUDA only (--provider cuda)")
    gen = m.get("generation", {})
    out.print(f"[bold]generation[/bold]   eos {gen.get('eos_token_ids')}, bos {gen.get('bos_token_id')}"
              f"{', BOS required' if gen.get('needs_bos') else ''}; tokenizer: "
              f"{'yes' if m.get('tokenizer', {}).get('files') else 'none'}")
    ver = m.get("verification")
    if ver:
        out.print(f"[bold]verified[/bold]     {ver['probe_tokens']} probe tokens ({ver['decode_steps']} "
                  f"decode steps): max |logit diff| {ver['max_abs_logit_diff']:.2e}, "
                  f"top-1 agreement {ver['top1_agreement']:.0%}")
    passes = Table(title="passes", title_justify="left", show_edge=False)
    for col in ("pass", "result (node count, op changes)"):
        passes.add_column(col)
    for p in m["passes"]:
        passes.add_row(p["name"], p["summary"])
    if m["passes"]:
        out.print(passes)
    else:
        out.print("[bold]passes[/bold]       none")
    files = Table(title=f"files ({_size(total)})", title_justify="left", show_edge=False)
    for col in ("file", "size", "sha256"):
        files.add_column(col)
    for name, f in m["files"].items():
        files.add_row(name, _size(f["size"]), f["sha256"][:16] + "...")
    out.print(files)
    versions = m.get("versions", {})
    out.print("[bold]built with[/bold]   " + ", ".join(f"{k} {v}" for k, v in versions.items()))
