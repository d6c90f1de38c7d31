"""`build_engine`: model in, verified engine directory out, one readable step after another.

    load -> capture -> passes -> write (staging dir) -> verify -> manifest -> rename into place
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from calibration import QuantConfig, quantize_model
from calibration.data import check_source, parse_spec, token_windows, windows_hash
from optimizer.capture import DecoderDims, capture, decoder_dims, kv_names
from optimizer.core.artifact import EngineDir, check_output_dir, load_engine, staging_dir, write_manifest
from optimizer.core.engine_format import KvCacheSpec
from optimizer.core.errors import InputError
from optimizer.core.progress import bar, console, step
from optimizer.evaluate import perplexity, session_logits_fn, torch_logits_fn
from optimizer.gate import DEFAULT_GATE_EVAL, GateFailed, check, failure_message, parse_limit
from optimizer.identity import build_identity
from optimizer.models.loader import LoadedModel, load_model
from optimizer.quantized import plain_weights
from optimizer.verify import verify_engine
from optimizer.options import BuildSection, check_choices
from passes import PassContext
from passes.kv_layout import METADATA_KEY as KV_LAYOUT_KEY
from passes.pipeline import resolve_pass_names, run_passes, validate_pass_names

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
EXTERNAL_DATA_THRESHOLD = 256 << 20  # weights larger than this go to model.onnx.data
DEFAULT_SLOTS = 16  # static / paged layouts: sequences decoded together
DEFAULT_SLOT_CAPACITY = 1024  # static layout: positions per slot (bounded by the max sequence length)
WEIGHT_FORMATS = {"onnxruntime": "matmulnbits", "onnxruntime-cuda": "cuda", "tensorrt": "dequantize"}
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True, kw_only=True)
class BuildOptions(BuildSection):
    """One build: the options of optimizer.options.BuildSection (dtype, passes, target, KV cache,
    ...), then this invocation's inputs."""

    out: Path
    source: str | None = None
    random_weights: bool = False
    config: str | None = None
    tokenizer: str | None = None
    seed: int = 0
    overwrite: bool = False
    trust_remote_code: bool = False
    quant: QuantConfig | None = None  # None: keep the weights in float
    dump_ir_after: tuple[str, ...] = ()  # pass names (or "all") whose output graph is dumped as text
    recipe: dict[str, Any] | None = None  # the resolved recipe, stored in the manifest
    architecture: str | None = None  # a recipe's architecture: the model must be of that family
    max_ppl_increase: str | None = None  # accuracy gate, e.g. "3%" or "0.5" (optimizer.gate)
    gate_eval: str = DEFAULT_GATE_EVAL  # the gate's text, SOURCE:NxL
    gate_baseline: float | None = None  # the baseline's perplexity on gate_eval; None: the source
    #                                     model's, measured in transformers before quantization
    quiet: bool = False

    @property
    def pass_names(self) -> tuple[str, ...]:
        """The passes this build runs, in order (`passes`, else the target's pipeline)."""
        return resolve_pass_names(self.pipeline())

    def validate(self) -> None:
        check_choices(self)
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise InputError(f"accuracy level must be 0..4, got {self.accuracy_level}",
                             hint="0 = fp32 compute (default), 4 = int8 activations (fastest on CPU)")
        if self.quant is not None:
            self.quant.validate()
            if "lower-quantized-matmul" not in self.pass_names:
                raise InputError("--quant needs the lower-quantized-matmul pass, which --passes leaves out",
                                 hint="add lower-quantized-matmul to --passes, or drop --quant")
        self.pass_names  # noqa: B018  (unknown names are errors)
        validate_pass_names([d for d in self.dump_ir_after if d != "all"], "--dump-ir-after pass")
        validate_target(self)
        if self.max_seq_len is not None and self.max_seq_len < 1:
            raise InputError(f"max sequence length must be positive, got {self.max_seq_len}")
        validate_kv_options(self)
        if self.max_ppl_increase is not None:
            parse_limit(self.max_ppl_increase)
            parse_spec(self.gate_eval)
        check_output_dir(self.out, self.overwrite)


def build_engine(opts: BuildOptions, loaded: LoadedModel | None = None) -> EngineDir:
    """Build the engine described by `opts` (from `loaded` when the model is already in memory;
    quantization then changes that model's weights in place, to their fake-quant values)."""
    opts.validate()  # every cheap check before the expensive work
    q = opts.quiet
    if loaded is None:
        with step("load model", q):
            loaded = load_model(opts.source, random_weights=opts.random_weights, config=opts.config,
                                tokenizer=opts.tokenizer, seed=opts.seed,
                                trust_remote_code=opts.trust_remote_code, quiet=q)
    if opts.architecture and opts.architecture != loaded.arch.name:
        raise InputError(f"the recipe is for {opts.architecture} models, and this model is {loaded.arch.name}",
                         hint=f"use a recipe for {loaded.arch.name} (recipes/{loaded.arch.name}-*.yaml)")
    gate_windows, baseline = None, opts.gate_baseline
    if opts.max_ppl_increase is not None:
        gate_windows = text_windows(loaded, opts.gate_eval, "the accuracy gate measures perplexity",
                                    "--max-ppl-increase")
        if baseline is None:  # before quantization changes the model's weights
            with step(f"accuracy gate: baseline perplexity of the source model ({opts.gate_eval})", q):
                baseline = perplexity(torch_logits_fn(loaded.model), gate_windows)["perplexity"]
    quantization: dict[str, Any] = {"method": "none"}
    codes: dict[str, Any] = {}
    if opts.quant is not None:
        with step(f"quantize: {opts.quant.describe()}", q):
            result = quantize_model(loaded, opts.quant, quiet=q)
        codes = result.codes
        quantization = {**result.manifest, **weight_format_section(opts)}
    dims = decoder_dims(loaded.config, loaded.arch)
    with step(f"capture {loaded.arch.name} decoder ({dims.num_layers} layers, {opts.dtype})", q):
        with bar("layers", dims.num_layers, q) as advance:
            model = capture(loaded, opts.dtype, on_layer=lambda i: advance())
    max_positions = opts.max_seq_len or model_max_positions(loaded.config)
    kv_scales, kv_quant = (), None
    if opts.kv_cache_dtype == "int8":
        with step(f"calibrate int8 KV-cache scales ({opts.kv_calib})", q):
            kv_scales, kv_quant = calibrate_kv_cache(loaded, dims, opts.kv_calib)
    with step("graph passes: " + (", ".join(opts.pass_names) or "none"), q):
        ctx = PassContext(plain_weights(codes), opts.accuracy_level, opts.dtype, max_positions, opts.kv_layout,
                          opts.kv_block_size, WEIGHT_FORMATS[opts.target], kv_scales)
        model, pass_reports = run_passes(model, opts.pass_names, ctx, opts.dump_ir_after, ir_dump_dir(opts.out))
        for r in pass_reports:
            if not q:
                console().print(f"  {r['name']}: {r['summary']}")
    if opts.dump_ir_after and not q:
        console().print(f"  graphs dumped to {ir_dump_dir(opts.out)}")
    if opts.target == "tensorrt":
        check_standard_ops(model)
    kv = kv_cache_section(dims, opts.dtype, attention_kind(model),
                          model.metadata_props.get(KV_LAYOUT_KEY, "concat"), max_positions, opts)
    if kv_quant is not None:
        kv = dataclasses.replace(kv, dtype="int8", quantization=kv_quant)
    with staging_dir(opts.out, opts.overwrite) as tmp:
        with step("write engine files", q):
            model_info = write_model(model, tmp, opts.external_data, full_check=opts.target == "tensorrt")
            tokenizer_files = write_tokenizer(loaded, tmp)
        with step("verify engine against the torch model", q):
            # FP8 quantizes activations too: no longer the float model to numerical noise
            exact = (opts.dtype == "fp32" and opts.accuracy_level == 0 and quantization["method"] != "fp8"
                     and kv_quant is None)
            verification = verify_engine(tmp / MODEL_FILE, kv, loaded, "fp32" if exact else "approx",
                                         provider=verify_provider(opts), quantization=quantization)
            if not q:
                console().print(f"  max |logit diff| {verification['max_abs_logit_diff']:.2e}, "
                                f"top-1 agreement {verification['top1_agreement']:.0%}")
        gate = None
        if gate_windows is not None:
            with step(f"accuracy gate: perplexity through the engine ({opts.gate_eval})", q):
                gate = engine_gate(tmp / MODEL_FILE, kv, quantization, gate_windows, baseline, opts)
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
        with step("checksums and manifest", q):
            write_manifest(tmp, manifest, quiet=q)
    if gate is not None and not gate["passed"]:  # the engine stays, marked as failing
        raise GateFailed(failure_message(f"the engine at {opts.out}", gate),
                         hint="its manifest records the failure; `optimize serve` refuses it unless "
                              "--allow-failed-gate")
    return load_engine(opts.out, verify=False)


def calibrate_kv_cache(loaded: LoadedModel, dims: DecoderDims, spec: str) -> tuple[tuple, dict[str, Any]]:
    """Per-layer (k, v) int8 scales from `spec`'s text through the (quantized) torch model,
    and the manifest's record of them."""
    from calibration.kv_scales import kv_cache_scales

    windows = text_windows(loaded, spec, "the int8 KV cache is calibrated", "--kv-cache-dtype int8")
    scales = kv_cache_scales(loaded.model, loaded.arch, windows, dims.head_dim)
    record = {"format": "int8, one static scale per layer for K and for V (PER_TENSOR)",
              "calibration": {"spec": spec, "windows": list(windows.shape), "sha256": windows_hash(windows)},
              "scales": [[round(k, 8), round(v, 8)] for k, v in scales]}
    return tuple(scales), record


def text_windows(loaded: LoadedModel, text_spec: str, needs: str, option: str) -> Any:
    """Token windows of `text_spec` for a build step that `needs` text (BOS first where the
    family wants it); without a tokenizer, an error naming the `option` that asked for it."""
    if loaded.tokenizer is None:
        raise InputError(f"{needs} on text, and this model has no tokenizer",
                         hint=f"pass --tokenizer with --random-weights, or drop {option}")
    bos = loaded.config.bos_token_id if loaded.arch.needs_bos else None
    return token_windows(loaded.tokenizer, parse_spec(text_spec), bos)


def engine_gate(model_path: Path, kv: KvCacheSpec, quantization: dict[str, Any], windows: Any,
                baseline: float, opts: BuildOptions) -> dict[str, Any]:
    """The gate's verdict on the engine being written (onnxruntime on its staged model file)."""
    from runtime.session import DecoderSession

    # huge_pages off: a build-time session, with the torch model resident beside it
    session = DecoderSession(model_path, kv, provider=verify_provider(opts),
                             quantization=quantization, huge_pages=False)
    ppl = perplexity(session_logits_fn(session), windows)["perplexity"]
    return {**check(parse_limit(opts.max_ppl_increase), ppl, baseline), "eval": opts.gate_eval,
            "windows_sha256": windows_hash(windows)}


def validate_target(opts: BuildOptions) -> None:
    """The TensorRT target runs only passes whose output is standard ONNX, on a concat cache."""
    if opts.target == "onnxruntime-cuda":
        validate_cuda_target(opts)
    if opts.target != "tensorrt":
        return
    from passes import REGISTRY

    onnxruntime_only = [p for p in opts.pass_names if "tensorrt" not in REGISTRY[p].targets]
    if onnxruntime_only:
        raise InputError(f"pass {onnxruntime_only[0]!r} emits onnxruntime-only ops, and --target tensorrt "
                         "needs standard ONNX", hint="use --passes tensorrt (the default for this target); "
                                                     "`optimize passes` lists each pass's targets")
    if opts.quant is not None and opts.quant.method != "fp8" and not opts.quant.symmetric:
        raise InputError("TensorRT's int4/int8 weight dequantization takes no zero points, so --asym "
                         "weights cannot be built for --target tensorrt", hint="use --sym with --target tensorrt")
    if opts.kv_layout not in ("auto", "concat"):
        raise InputError(f"--kv-layout {opts.kv_layout} needs onnxruntime's attention kernels; "
                         "the TensorRT target keeps attention in standard ops with a concat cache",
                         hint="drop --kv-layout (or use concat) with --target tensorrt")


def validate_cuda_target(opts: BuildOptions) -> None:
    """onnxruntime-cuda engines are verified on the CUDA provider: it must be here, and FP8's
    CUDA kernel takes float16 / bfloat16 activations only."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise InputError("--target onnxruntime-cuda builds an engine that uses CUDA-only kernels and is "
                         "verified on onnxruntime's CUDA provider, which this onnxruntime does not have",
                         hint="build on a machine with an NVIDIA GPU and onnxruntime-gpu installed, or use "
                              "--target onnxruntime (runs on CPU and CUDA)")
    if opts.quant is not None and opts.quant.method == "fp8" and opts.dtype != "fp16":
        raise InputError(f"onnxruntime's CUDA FP8 kernel takes float16 activations; --dtype is {opts.dtype}",
                         hint="use --dtype fp16 with --target onnxruntime-cuda")


def verify_provider(opts: BuildOptions) -> str:
    return "cuda" if opts.target == "onnxruntime-cuda" or opts.kv_layout == "paged" else "cpu"


def weight_format_section(opts: BuildOptions) -> dict[str, Any]:
    """How the quantized weights are stored in the graph, for the manifest (`provider`: the
    execution provider the engine needs, where its kernels exist on one only)."""
    if opts.quant.method == "fp8" and opts.target == "onnxruntime-cuda":
        return {"format": "MatMulBlockQuantizedFp8Weight (float8e4m3fn, per-channel weights, "
                          "per-tensor static activations)", "provider": "cuda"}
    if opts.quant.method == "fp8":
        return {"format": "QDQ (float8e4m3fn, per-channel weights, per-tensor static activations)"}
    if opts.target == "tensorrt":  # accuracy level: onnxruntime's DQ + MatMul -> MatMulNBits at load
        return {"format": "DequantizeLinear (opset 21, blocked) + MatMul", "accuracy_level": opts.accuracy_level}
    return {"format": "MatMulNBits", "accuracy_level": opts.accuracy_level}


def check_standard_ops(model: ir.Model) -> None:
    nonstandard = sorted({f"{n.domain}::{n.op_type}" for n in model.graph if n.domain not in STANDARD_DOMAINS})
    if nonstandard:
        raise InputError("the TensorRT target's graph still has non-standard ops: " + ", ".join(nonstandard),
                         hint="this is a bug in the tensorrt pipeline; please report it with the model's config")


def tensorrt_section(model_info: dict[str, Any], opts: BuildOptions, max_positions: int) -> dict[str, Any]:
    """Opset, precisions and the optimization profiles `optimize build-trt` gives TensorRT."""
    from optimizer.tensorrt import tensorrt_manifest_section

    quant = opts.quant
    precisions = [] if quant is None else ["fp8" if quant.method == "fp8" else f"int{quant.bits}"]
    max_seq = min(opts.kv_capacity or DEFAULT_SLOT_CAPACITY, max_positions)
    return tensorrt_manifest_section(model_info["input_shapes"], opts.dtype, precisions,
                                     opts.kv_slots or DEFAULT_SLOTS, max_seq)


def validate_kv_options(opts: BuildOptions) -> None:
    if opts.kv_layout != "auto" and "kv-layout" not in opts.pass_names:
        raise InputError(f"--kv-layout {opts.kv_layout} needs the kv-layout pass, which --passes leaves out",
                         hint="add kv-layout to --passes")
    if opts.kv_layout in ("static", "paged") and "fuse-attention" not in opts.pass_names:
        raise InputError(f"the {opts.kv_layout} KV-cache layout needs fused attention, which --passes leaves out",
                         hint="keep fuse-attention in --passes, or use --kv-layout concat")
    if opts.kv_layout == "paged":
        validate_paged(opts)
    validate_kv_cache_dtype(opts)
    for name in ("kv_slots", "kv_capacity", "kv_block_size", "kv_blocks"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if opts.kv_capacity and opts.max_seq_len and opts.kv_capacity > opts.max_seq_len:
        raise InputError(f"--kv-capacity {opts.kv_capacity} exceeds --max-seq-len {opts.max_seq_len}",
                         hint="a slot cannot hold more positions than the engine's rotary tables cover")


def validate_kv_cache_dtype(opts: BuildOptions) -> None:
    """The int8 cache is GroupQueryAttention's (CPU kernel), with the static or concat layout."""
    if opts.kv_cache_dtype == "auto":
        return
    if "quantize-kv-cache" not in opts.pass_names or "fuse-attention" not in opts.pass_names:
        raise InputError("--kv-cache-dtype int8 needs the fuse-attention and quantize-kv-cache passes, "
                         "which --passes leaves out", hint="use --passes default, or add both passes")
    if opts.kv_layout == "paged":
        raise InputError("the paged layout's kernel (PagedAttention) takes no int8 KV cache",
                         hint="use --kv-layout static with --kv-cache-dtype int8, or drop --kv-cache-dtype")
    if opts.target != "onnxruntime":
        raise InputError(f"the int8 KV cache runs on onnxruntime's CPU attention kernel; --target {opts.target} "
                         "cannot take it", hint="use --target onnxruntime, or drop --kv-cache-dtype")
    if opts.random_weights and not opts.tokenizer:
        raise InputError("the int8 KV cache is calibrated on text, and a random-weight model has no tokenizer",
                         hint="pass --tokenizer with --random-weights, or drop --kv-cache-dtype int8")
    check_source(parse_spec(opts.kv_calib).source)


def validate_paged(opts: BuildOptions) -> None:
    """Paged engines run onnxruntime's PagedAttention, a CUDA kernel of float16 inputs, and the
    build verifies them there: the CUDA provider must be present."""
    import onnxruntime as ort

    block = opts.kv_block_size
    if block < 16 or block & (block - 1):
        raise InputError(f"--kv-block-size {block}: onnxruntime's PagedAttention takes blocks of a power of "
                         "two tokens, at least 16", hint="use 16, 32, 64, ...")
    if opts.dtype != "fp16":
        raise InputError(f"the paged KV-cache layout's kernel (onnxruntime's PagedAttention) takes float16; "
                         f"--dtype is {opts.dtype}", hint="use --dtype fp16 with --kv-layout paged")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise InputError("the paged KV-cache layout runs on onnxruntime's PagedAttention, a CUDA-only kernel, "
                         "and the build verifies the engine on the CUDA provider, which this onnxruntime "
                         "does not have", hint="build on a machine with an NVIDIA GPU and onnxruntime-gpu, "
                                               "or use --kv-layout static (slots written in place; CPU and CUDA)")


def kv_cache_section(dims: DecoderDims, dtype: str, attention: str = "unfused", layout: str = "concat",
                     max_positions: int | None = None, sizes: BuildOptions | None = None) -> KvCacheSpec:
    """The cache interface and its sizes, which the runtime reads (KvCacheSpec says what each
    layout records)."""
    past_k, past_v, present_k, present_v = (n.replace(".0.", ".{i}.") for n in kv_names(0))
    fused = attention != "unfused"
    sizes = sizes or BuildOptions(out=Path("."))
    capacity = min(sizes.kv_capacity or DEFAULT_SLOT_CAPACITY, max_positions or DEFAULT_SLOT_CAPACITY)
    slots = sizes.kv_slots or DEFAULT_SLOTS
    layout_sizes: dict[str, Any] = {}
    if layout == "static":
        layout_sizes = dict(slots=slots, slot_capacity=capacity)
    elif layout == "paged":
        block = sizes.kv_block_size
        layout_sizes = dict(slots=slots, block_size=block, num_blocks=sizes.kv_blocks or -(-slots * capacity // block),
                            max_blocks_per_sequence=-(-max_positions // block))
    return KvCacheSpec(dims.num_layers, dims.num_kv_heads, dims.head_dim, dtype, past_k, past_v, present_k, present_v,
                       attention=attention, max_sequence_length=max_positions if fused else None, layout=layout,
                       sliding_windows=tuple(dims.windows), padding="right" if fused else "left", **layout_sizes)


def attention_kind(model: ir.Model) -> str:
    ops = {n.op_type for n in model.graph}
    return next((op for op in ("PagedAttention", "GroupQueryAttention") if op in ops), "unfused")


def model_max_positions(config: Any) -> int:
    return int(getattr(config, "max_position_embeddings", None) or 4096)


def ir_dump_dir(out: Path) -> Path:
    """Where --dump-ir-after writes: beside the engine, so a failed build still leaves the dumps."""
    return out.with_name(out.name + ".ir")


def write_model(model: ir.Model, directory: Path, external_data: str, full_check: bool = False) -> dict[str, Any]:
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values()
                       if v.const_value is not None)
    external = external_data == "always" or (external_data == "auto" and weight_bytes > EXTERNAL_DATA_THRESHOLD)
    path = directory / MODEL_FILE
    ir.save(model, path, external_data=DATA_FILE if external else None)
    onnx.checker.check_model(str(path), full_check=full_check)  # by path: external data and > 2 GB
    return {"file": MODEL_FILE, "external_data": DATA_FILE if external else None,
            "weight_bytes": weight_bytes, "opset": dict(model.opset_imports),
            "inputs": [v.name for v in model.graph.inputs],
            "input_shapes": [(v.name, [d if isinstance(d, int) else str(d) for d in v.shape])
                             for v in model.graph.inputs],
            "outputs": [v.name for v in model.graph.outputs]}


def write_tokenizer(loaded: LoadedModel, directory: Path) -> list[str]:
    before = {p.name for p in directory.iterdir()}
    loaded.model.generation_config.save_pretrained(directory)
    if loaded.tokenizer is None:
        return []
    loaded.tokenizer.save_pretrained(directory)
    return sorted({p.name for p in directory.iterdir()} - before - {"generation_config.json"})


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
