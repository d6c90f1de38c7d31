"""`build_engine`: model in, verified engine directory out, one named step per line.

    load -> gate baseline -> quantize -> capture -> passes -> write (staging dir) -> verify
         -> gate -> manifest -> rename into place

The checks made before any of it live in optimizer.build_checks, the manifest's sections in
optimizer.manifest, the file writing in optimizer.engine_files.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import onnx_ir as ir

from calibration import Progress, QuantConfig, quantize_model
from calibration.layer_store import PROGRESS_FILE, progress_dir
from calibration.data import parse_spec, token_windows, windows_hash
from optimizer.build_checks import check_standard_ops, validate_build
from optimizer.capture import DecoderDims, capture, decoder_dims
from optimizer.core.artifact import EngineDir, load_engine, staging_dir, write_manifest
from optimizer.core.engine_format import KvCacheSpec, flash_paged_block
from optimizer.core.errors import InputError
from optimizer.core.out_lock import output_lock
from optimizer.core.progress import bar, console, step
from optimizer.engine_files import MODEL_FILE, ir_dump_dir, write_model, write_tokenizer
from optimizer.evaluate import perplexity, session_logits_fn, torch_logits_fn
from optimizer.gate import DEFAULT_GATE_EVAL, GateFailed, check, failure_message, parse_limit
from optimizer.manifest import (attention_kind, custom_op_domains, engine_manifest, kv_cache_section,
                                weight_format_after_passes, weight_format_section)
from optimizer.models.loader import LoadedModel, load_model
from optimizer.models.streamed import running
from optimizer.options import BuildSection
from optimizer.quantized import plain_weights
from optimizer.verify import probe_ids, reference_logits, verify_engine
from passes import PassContext
from passes.kv_layout import METADATA_KEY as KV_LAYOUT_KEY
from passes.pipeline import resolve_pass_names, run_passes

WEIGHT_FORMATS = {"onnxruntime": "matmulnbits", "onnxruntime-cuda": "cuda", "tensorrt": "dequantize"}


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
    resume: bool = False  # a calibrated build continues from the layers a killed one finished
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

    def pipeline(self) -> str | list[str]:
        """BuildSection's, except that the paged layout with float weights has its own default
        (passes.PAGED_PIPELINE: gate and up stay two GEMMs)."""
        if self.passes is None and self.target != "tensorrt" and self.kv_layout == "paged" and self.quant is None:
            return "paged"
        return super().pipeline()

    @property
    def pass_names(self) -> tuple[str, ...]:
        """The passes this build runs, in order (`passes`, else the target's pipeline)."""
        return resolve_pass_names(self.pipeline())

    def validate(self) -> None:
        validate_build(self)


@dataclass(frozen=True)
class Gate:
    """The accuracy gate's text and the perplexity the engine is held to."""

    windows: Any
    baseline: float


def build_engine(opts: BuildOptions, loaded: LoadedModel | None = None) -> EngineDir:
    """Build the engine described by `opts` (from `loaded` when the model is already in memory;
    quantization then changes that model's weights in place, to their fake-quant values)."""
    opts.validate()  # every cheap check before the expensive work
    with output_lock(opts.out, report=lambda line: opts.quiet or console().print(line)):
        return _build(opts, loaded)


def _build(opts: BuildOptions, loaded: LoadedModel | None) -> EngineDir:
    """The build's steps, run while this process holds `opts.out`'s lock (optimizer.core.out_lock)."""
    loaded = loaded or load(opts)
    check_architecture(opts, loaded)
    gate = prepare_gate(opts, loaded)  # its baseline, before quantization changes the weights
    quantization, codes = quantize(opts, loaded)
    model, dims = capture_graph(opts, loaded)
    max_positions = opts.max_seq_len or model_max_positions(loaded.config)
    kv_scales, kv_quant = calibrate_kv(opts, loaded, dims, codes)
    model, pass_reports = graph_passes(opts, model, codes, max_positions, kv_scales, block_size(opts, dims))
    quantization = weight_format_after_passes(model, quantization)
    kv = kv_cache_section(dims, opts.dtype, attention_kind(model), model.metadata_props.get(KV_LAYOUT_KEY, "concat"),
                          max_positions, opts, kv_quant)
    ops = custom_op_domains(model)
    with staging_dir(opts.out, opts.overwrite) as tmp:
        model_info, tokenizer_files = write_files(opts, model, loaded, tmp)
        verification = verify(opts, tmp / MODEL_FILE, kv, loaded, quantization, codes, ops)
        verdict = measure_gate(opts, tmp / MODEL_FILE, kv, quantization, gate, ops)
        manifest = engine_manifest(opts, loaded, quantization, pass_reports, kv, model_info, tokenizer_files,
                                   verification, verdict, max_positions, ops)
        with step("checksums and manifest", opts.quiet):
            write_manifest(tmp, manifest, quiet=opts.quiet)
    shutil.rmtree(progress_dir(opts.out), ignore_errors=True)  # calibration's kept layers: done with
    refuse_failed_gate(opts, verdict)
    return load_engine(opts.out, verify=False)


# -- the steps, in order -----------------------------------------------------------------------
def load(opts: BuildOptions) -> LoadedModel:
    with step("load model", opts.quiet):
        return load_model(opts.source, random_weights=opts.random_weights, config=opts.config,
                          tokenizer=opts.tokenizer, seed=opts.seed, trust_remote_code=opts.trust_remote_code,
                          quiet=opts.quiet, stream=opts.stream)


def check_architecture(opts: BuildOptions, loaded: LoadedModel) -> None:
    if opts.architecture and opts.architecture != loaded.arch.name:
        raise InputError(f"the recipe is for {opts.architecture} models, and this model is {loaded.arch.name}",
                         hint=f"use a recipe for {loaded.arch.name} (recipes/{loaded.arch.name}-*.yaml)")


def prepare_gate(opts: BuildOptions, loaded: LoadedModel) -> Gate | None:
    """The gate's windows, and its baseline: given, or the source model's perplexity on them."""
    if opts.max_ppl_increase is None:
        return None
    windows = text_windows(loaded, opts.gate_eval, "the accuracy gate measures perplexity", "--max-ppl-increase")
    baseline = opts.gate_baseline
    if baseline is None:
        with step(f"accuracy gate: baseline perplexity of the source model ({opts.gate_eval})", opts.quiet), \
                running(loaded) as model:
            baseline = perplexity(torch_logits_fn(model), windows)["perplexity"]
    return Gate(windows, baseline)


def quantize(opts: BuildOptions, loaded: LoadedModel) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest's quantization section and the codes the lowering pass packs."""
    if opts.quant is None:
        return {"method": "none"}, {}
    progress = Progress(progress_dir(opts.out), opts.resume)
    with step(f"quantize: {opts.quant.describe()}", opts.quiet), kept_on_failure(progress.directory, opts.quiet):
        result = quantize_model(loaded, opts.quant, quiet=opts.quiet, progress=progress)
    return {**result.manifest, **weight_format_section(opts)}, result.codes


def capture_graph(opts: BuildOptions, loaded: LoadedModel) -> tuple[ir.Model, DecoderDims]:
    dims = decoder_dims(loaded.config, loaded.arch)
    with step(f"capture {loaded.arch.name} decoder ({dims.num_layers} layers, {opts.dtype})", opts.quiet):
        with bar("layers", dims.num_layers, opts.quiet) as advance:
            return capture(loaded, opts.dtype, on_layer=lambda i: advance()), dims


def block_size(opts: BuildOptions, dims: DecoderDims) -> int:
    """The paged layout's block size: --kv-block-size, else what onnxruntime's flash kernel
    reads in place at the model's head size (flash_paged_block; the manifest resolves it alike).
    The options keep None: the build's identity is what was asked for."""
    return opts.kv_block_size or flash_paged_block(dims.head_dim)


def calibrate_kv(opts: BuildOptions, loaded: LoadedModel, dims: DecoderDims,
                 codes: dict[str, Any]) -> tuple[tuple, dict[str, Any] | None]:
    """Per-layer (k, v) int8 / fp8 scales from the calibration text through the (quantized)
    torch model, and the manifest's record of them; nothing for a float cache."""
    dtype = opts.kv_cache_dtype
    if dtype not in ("int8", "fp8"):
        return (), None
    from calibration.kv_scales import kv_cache_scales

    with step(f"calibrate {dtype} KV-cache scales ({opts.kv_calib})", opts.quiet):
        windows = text_windows(loaded, opts.kv_calib, f"the {dtype} KV cache is calibrated",
                               f"--kv-cache-dtype {dtype}")
        with running(loaded, codes) as model:
            scales = kv_cache_scales(model, loaded.arch, windows, dims.head_dim, dtype=dtype)
    code = {"int8": "int8", "fp8": "float8 E4M3"}[dtype]
    record = {"dtype": dtype, "format": f"{code}, one static scale per layer for K and for V (PER_TENSOR)",
              "calibration": {"spec": opts.kv_calib, "windows": list(windows.shape), "sha256": windows_hash(windows)},
              "scales": [[round(k, 8), round(v, 8)] for k, v in scales]}
    return tuple(scales), record


def graph_passes(opts: BuildOptions, model: ir.Model, codes: dict[str, Any], max_positions: int,
                 kv_scales: tuple, kv_block_size: int) -> tuple[ir.Model, list[dict[str, Any]]]:
    q = opts.quiet
    with step("graph passes: " + (", ".join(opts.pass_names) or "none"), q):
        ctx = PassContext(plain_weights(codes), opts.accuracy_level, opts.dtype, max_positions, opts.kv_layout,
                          kv_block_size, WEIGHT_FORMATS[opts.target], kv_scales, opts.kv_cache_dtype)
        model, reports = run_passes(model, opts.pass_names, ctx, opts.dump_ir_after, ir_dump_dir(opts.out))
        for r in reports:
            if not q:
                console().print(f"  {r['name']}: {r['summary']}")
    if opts.dump_ir_after and not q:
        console().print(f"  graphs dumped to {ir_dump_dir(opts.out)}")
    if opts.target == "tensorrt":
        check_standard_ops(model)
    return model, reports


def write_files(opts: BuildOptions, model: ir.Model, loaded: LoadedModel, tmp: Path) -> tuple[dict[str, Any], list[str]]:
    with step("write engine files", opts.quiet):
        return (write_model(model, tmp, opts.external_data, full_check=opts.target == "tensorrt"),
                write_tokenizer(loaded, tmp))


def verify(opts: BuildOptions, model_path: Path, kv: KvCacheSpec, loaded: LoadedModel,
           quantization: dict[str, Any], codes: dict[str, Any], custom_ops: tuple[str, ...] = ()) -> dict[str, Any]:
    """The staged engine against the torch model: to numerical noise where it computes in fp32
    what the model does (FP8 and the int8 cache quantize activations too: figures only)."""
    with step("verify engine against the torch model", opts.quiet):
        exact = (opts.dtype == "fp32" and opts.accuracy_level == 0 and quantization["method"] != "fp8"
                 and kv.quantization is None)
        with running(loaded, codes) as model:  # a streamed model: layer by layer, released after
            reference = reference_logits(model, probe_ids(loaded))
        report = verify_engine(model_path, kv, loaded, "fp32" if exact else "approx",
                               provider=verify_provider(opts), quantization=quantization, reference=reference,
                               custom_ops=custom_ops)
        if not opts.quiet:
            console().print(f"  max |logit diff| {report['max_abs_logit_diff']:.2e}, "
                            f"top-1 agreement {report['top1_agreement']:.0%}")
    return report


def measure_gate(opts: BuildOptions, model_path: Path, kv: KvCacheSpec, quantization: dict[str, Any],
                 gate: Gate | None, custom_ops: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The gate's verdict on the staged engine (onnxruntime on its model file)."""
    if gate is None:
        return None
    from runtime.session import DecoderSession

    with step(f"accuracy gate: perplexity through the engine ({opts.gate_eval})", opts.quiet):
        # huge_pages off: a build-time session, with the torch model resident beside it
        session = DecoderSession(model_path, kv, provider=verify_provider(opts), quantization=quantization,
                                 huge_pages=False, custom_ops=custom_ops)
        ppl = perplexity(session_logits_fn(session), gate.windows)["perplexity"]
    return {**check(parse_limit(opts.max_ppl_increase), ppl, gate.baseline), "eval": opts.gate_eval,
            "windows_sha256": windows_hash(gate.windows)}


def refuse_failed_gate(opts: BuildOptions, verdict: dict[str, Any] | None) -> None:
    """A failing engine stays written, marked as failing in its manifest; the build fails."""
    if verdict is not None and not verdict["passed"]:
        raise GateFailed(failure_message(f"the engine at {opts.out}", verdict),
                         hint="its manifest records the failure; `optimize serve` refuses it unless "
                              "--allow-failed-gate")


# -- helpers -------------------------------------------------------------------------------------
@contextmanager
def kept_on_failure(directory: Path, quiet: bool) -> Iterator[None]:
    """Say where a failed (or interrupted) calibration's finished layers are kept."""
    try:
        yield
    except BaseException:
        if (directory / PROGRESS_FILE).exists() and any(directory.glob("layer-*.safetensors")):
            console().print(f"calibration stopped; its finished layers are kept at {directory}: "
                            "rerun the same command with --resume to continue from them")
        raise


def text_windows(loaded: LoadedModel, text_spec: str, needs: str, option: str) -> Any:
    """Token windows of `text_spec` for a build step that `needs` text (BOS first where the
    family wants it); without a tokenizer, an error naming the `option` that asked for it."""
    if loaded.tokenizer is None:
        raise InputError(f"{needs} on text, and this model has no tokenizer",
                         hint=f"pass --tokenizer with --random-weights, or drop {option}")
    bos = loaded.config.bos_token_id if loaded.arch.needs_bos else None
    return token_windows(loaded.tokenizer, parse_spec(text_spec), bos)


def verify_provider(opts: BuildOptions) -> str:
    return "cuda" if opts.target == "onnxruntime-cuda" or opts.kv_layout == "paged" else "cpu"


def model_max_positions(config: Any) -> int:
    return int(getattr(config, "max_position_embeddings", None) or 4096)
