"""The manifest's sections that the build computes (optimizer.core.artifact writes the file;
optimizer.core.engine_format types the KV-cache section)."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from typing import TYPE_CHECKING, Any

import onnx
import onnx_ir as ir

from optimizer.capture import DecoderDims, kv_names
from optimizer.core.engine_format import KvCacheSpec, flash_paged_block
from optimizer.identity import build_identity
from optimizer.models.loader import LoadedModel
from optimizer.options import BuildSection

if TYPE_CHECKING:
    from optimizer.pipeline import BuildOptions

DEFAULT_SLOTS = 16  # static / paged layouts: sequences decoded together
DEFAULT_SLOT_CAPACITY = 1024  # static layout: positions per slot (bounded by the max sequence length)


def engine_manifest(opts: "BuildOptions", loaded: LoadedModel, quantization: dict[str, Any],
                    pass_reports: list[dict[str, Any]], kv: KvCacheSpec, model_info: dict[str, Any],
                    tokenizer_files: list[str], verification: dict[str, Any], gate: dict[str, Any] | None,
                    max_positions: int, custom_ops: tuple[str, ...] = ()) -> dict[str, Any]:
    """Everything manifest.json records but the format version, tool and checksums (which
    optimizer.core.artifact.write_manifest adds)."""
    manifest = {
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": loaded.source,
        "architecture": {"name": loaded.arch.name, "model_type": loaded.config.model_type,
                         "config": json.loads(loaded.config.to_json_string(use_diff=False))},
        "dtype": opts.dtype,
        "target": opts.target,
        "quantization": quantization,
        "passes": pass_reports,
        "recipe": opts.recipe,
        "kv_cache": kv.to_manifest(),
        "model": model_info,
        "generation": generation_section(loaded),
        "tokenizer": {"files": tokenizer_files},
        "verification": verification,
        "versions": tool_versions(),
        "identity": build_identity(opts, loaded.source),
    }
    if opts.target == "tensorrt":
        manifest["tensorrt"] = tensorrt_section(model_info, opts, max_positions)
    if gate is not None:
        manifest["gate"] = gate
    if custom_ops:  # the runtime registers our custom-op library for these domains
        manifest["custom_ops"] = list(custom_ops)
    return manifest


def custom_op_domains(model: ir.Model) -> tuple[str, ...]:
    """The domains of our custom-op library (runtime.custom_ops) that the model imports."""
    from passes._match import CUSTOM_DOMAIN

    return (CUSTOM_DOMAIN,) if CUSTOM_DOMAIN in model.opset_imports else ()


def kv_cache_section(dims: DecoderDims, dtype: str, attention: str = "unfused", layout: str = "concat",
                     max_positions: int | None = None, sizes: BuildSection | None = None,
                     quantized: dict[str, Any] | None = None) -> KvCacheSpec:
    """The cache interface and its sizes, which the runtime reads (KvCacheSpec says what each
    layout records); `quantized`: the calibrated int8 / fp8 cache's record, where the build made one."""
    past_k, past_v, present_k, present_v = (n.replace(".0.", ".{i}.") for n in kv_names(0))
    fused = attention != "unfused"
    sizes = sizes or BuildSection()
    capacity = min(sizes.kv_capacity or DEFAULT_SLOT_CAPACITY, max_positions or DEFAULT_SLOT_CAPACITY)
    slots = sizes.kv_slots or DEFAULT_SLOTS
    layout_sizes: dict[str, Any] = {}
    if layout == "static":
        layout_sizes = dict(slots=slots, slot_capacity=capacity)
    elif layout == "paged":
        block = sizes.kv_block_size or flash_paged_block(dims.head_dim)
        layout_sizes = dict(slots=slots, block_size=block, num_blocks=sizes.kv_blocks or -(-slots * capacity // block),
                            max_blocks_per_sequence=-(-max_positions // block))
    return KvCacheSpec(dims.num_layers, dims.num_kv_heads, dims.head_dim, quantized["dtype"] if quantized else dtype,
                       past_k, past_v, present_k, present_v, attention=attention,
                       max_sequence_length=max_positions if fused else None, layout=layout,
                       sliding_windows=tuple(dims.windows), padding="right" if fused else "left",
                       quantization=quantized, **layout_sizes)


def attention_kind(model: ir.Model) -> str:
    ops = {n.op_type for n in model.graph}
    return next((op for op in ("PagedAttention", "GroupQueryAttention", "CachedAttention") if op in ops), "unfused")


def weight_format_section(opts: "BuildOptions") -> dict[str, Any]:
    """How the quantized weights are stored in the graph, for the manifest (`provider`: the
    execution provider the engine needs, where its kernels exist on one only)."""
    if opts.quant.method == "fp8" and opts.target == "onnxruntime-cuda":
        return {"format": "MatMulBlockQuantizedFp8Weight (float8e4m3fn, per-channel weights, "
                          "per-tensor static activations)", "provider": "cuda"}
    if opts.quant.method == "fp8":
        return {"format": "QDQ (float8e4m3fn, per-channel weights, per-tensor static activations)"}
    if "prepack-int4-sm90" in opts.pass_names:
        return {"format": "MatMulNBits, B in the SM90 (Hopper) layout of onnxruntime's mixed-input GEMM "
                          "(weight_prepacked=2; compute capability 9.0 only)",
                "accuracy_level": opts.accuracy_level, "provider": "cuda", "compute_capability": "9.0"}
    if opts.target == "tensorrt":  # accuracy level: onnxruntime's DQ + MatMul -> MatMulNBits at load
        return {"format": "DequantizeLinear (opset 21, blocked) + MatMul", "accuracy_level": opts.accuracy_level}
    return {"format": "MatMulNBits", "accuracy_level": opts.accuracy_level}


def weight_format_after_passes(model: ir.Model, section: dict[str, Any]) -> dict[str, Any]:
    """The quantization section's weight format as the passes left the graph: 4-bit linears that
    custom-linear made ours read MatMulNBits' arrays through the optimizer.ops LinearInt4 family
    (fp32 sums: no accuracy level applies to them)."""
    from passes._match import CUSTOM_DOMAIN

    # a LinearInt4NormLinearInt4[SwiGLU] node holds two linears
    ours = sum(n.op_type.count("Int4") for n in model.graph if n.domain == CUSTOM_DOMAIN)
    if not ours:
        return section
    left = sum(1 for n in model.graph if n.op_type == "MatMulNBits")
    updated = {**section, "format": f"optimizer.ops LinearInt4 family ({ours} linears, MatMulNBits' layout, fp32 sums)"
                                    + (f"; MatMulNBits ({left} nodes)" if left else "")}
    if not left:
        updated.pop("accuracy_level", None)
    return updated


def tensorrt_section(model_info: dict[str, Any], opts: "BuildOptions", max_positions: int) -> dict[str, Any]:
    """Opset, precisions and the optimization profiles `optimize build-trt` gives TensorRT."""
    from optimizer.tensorrt import tensorrt_manifest_section

    quant = opts.quant
    precisions = [] if quant is None else ["fp8" if quant.method == "fp8" else f"int{quant.bits}"]
    max_seq = min(opts.kv_capacity or DEFAULT_SLOT_CAPACITY, max_positions)
    return tensorrt_manifest_section(model_info["input_shapes"], opts.dtype, precisions,
                                     opts.kv_slots or DEFAULT_SLOTS, max_seq)


def generation_section(loaded: LoadedModel) -> dict[str, Any]:
    gen, tok = loaded.model.generation_config, loaded.tokenizer
    eos = gen.eos_token_id if gen.eos_token_id is not None else []
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    if tok is not None and tok.eos_token_id is not None:
        eos_ids.add(tok.eos_token_id)
    return {"eos_token_ids": sorted(eos_ids), "bos_token_id": gen.bos_token_id,
            "pad_token_id": gen.pad_token_id, "needs_bos": loaded.arch.needs_bos}


def tool_versions() -> dict[str, str]:
    import numpy
    import onnxruntime
    import torch
    import transformers

    from optimizer import __version__

    return {"optimizer": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnx_ir": ir.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__}
