"""Calibration and weight quantization on the torch module, layer by layer: the package's
names (`calibration/__init__.py` loads this module on first use).

    result = quantize_model(loaded, quant_config(method="gptq", bits=4, group_size=64))
    result.codes["model.layers.0.self_attn.q_proj"]  # QuantizedLinear: codes, scales, zeros
    #                                                   (Fp8Linear for method "fp8")

After quantization the module's linears hold their dequantized weights (fake-quant), so the
torch model computes what the engine computes; `codes` feeds the MatMulNBits lowering pass.
ALGORITHMS maps each configuration class (calibration/config/) to its algorithm; the
calibrated ones share the layer-by-layer driver (sequential.py), each with its per-layer step.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import time
from dataclasses import dataclass, field
from pathlib import Path
from functools import partial
from typing import Any, Callable

import numpy as np
import torch

from calibration.config import (AwqConfig, AwqGptqConfig, Calibrated, Fp8Config, GptqConfig, GptqRounding,
                                IntWeightConfig, QuantConfig, RtnConfig, quant_config)
from calibration.data import parse_spec, token_windows, windows_hash
from calibration.deferred import deferred_rtn
from calibration.distill import distill_fp8
from calibration.mappings import module_names
from calibration.gptq import HessianAccumulator, gptq_quantize
from calibration.methods import awq_gptq_layer, awq_layer, fp8_layer, gptq_layer, store_quantized
from calibration.rtn import QuantizedLinear, rtn_quantize
from calibration.layer_store import LayerStore
from calibration.sequential import LayerWork, run_sequential
from optimizer.core.errors import InputError
from optimizer.core.progress import console
from optimizer.core.architectures import output_tied

__all__ = ["ALGORITHMS", "Progress", "QuantConfig", "QuantizationResult", "check_streamable", "quant_config",
           "quantize_model"]


@dataclass
class QuantizationResult:
    codes: dict[str, QuantizedLinear]
    manifest: dict[str, Any] = field(default_factory=dict)


def _keep_matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    return lambda name: any(fnmatch.fnmatch(name, p) or name == p for p in patterns)


def target_linears(loaded: Any, keep: Callable[[str], bool]) -> dict[str, torch.nn.Linear]:
    """Every decoder linear not kept in float, by module name."""
    out = {}
    for i in range(loaded.config.num_hidden_layers):
        for name in module_names(loaded.arch, i).values():
            if not keep(name):
                out[name] = loaded.model.get_submodule(name)
    return out


def calibration_windows(loaded: Any, cfg: Calibrated, text: str | None = None) -> np.ndarray:
    """Token windows of `text` (a SOURCE:NxL spec; default cfg.calib), drawn as cfg says."""
    spec = parse_spec(text or cfg.calib, cfg.calib_seed)
    if loaded.tokenizer is None:
        raise InputError("calibration needs a tokenizer, and this model has none",
                         hint="pass --tokenizer with --random-weights")
    bos = loaded.config.bos_token_id if loaded.arch.needs_bos else None
    return token_windows(loaded.tokenizer, spec, bos, allow_fewer=cfg.calib_allow_fewer)


@dataclass(frozen=True)
class Progress:
    """Where a calibrated build keeps its finished layers (calibration.layer_store), and
    whether to resume from them."""

    directory: Path
    resume: bool = False


def quantize_model(loaded: Any, cfg: QuantConfig, quiet: bool = False,
                   progress: Progress | None = None) -> QuantizationResult:
    """Quantize `loaded` in place as `cfg` says; with `progress`, the integer calibrated methods
    keep each finished layer on disk there (and, resuming, restore those kept)."""
    cfg.validate()
    if progress is not None and progress.resume and not isinstance(cfg, (AwqConfig, GptqConfig, AwqGptqConfig)):
        raise InputError(f"--resume continues a calibrated integer build (awq, gptq, awq-gptq); this one is "
                         f"{cfg.describe()}", hint="drop --resume: this method is not resumable")
    if loaded.streamed:
        check_streamable(cfg)
    keep = _keep_matcher(cfg.keep)
    codes: dict[str, QuantizedLinear] = {}
    manifest: dict[str, Any] = cfg.to_manifest()
    start = time.perf_counter()
    # the quantized model's last hidden states on the calibration windows (None without calibration)
    hidden = ALGORITHMS[type(cfg)](loaded, cfg, keep, codes, manifest, quiet, progress)
    shared = False
    if cfg.lm_head_bits is not None:
        manifest["lm_head_method"], shared = quantize_lm_head(loaded, cfg, codes,
                                                              hidden if isinstance(cfg, GptqRounding) else None)
        manifest["embedding_shares_lm_head"] = shared
    manifest["quantized_modules"] = len(codes)
    # the embeddings stay in float (unless tied to a quantized lm_head), lm_head unless
    # lm_head_bits; patterns add more.
    manifest["kept_in_float"] = (["lm_head"] if cfg.lm_head_bits is None else []) + \
        ([] if shared else ["embed_tokens"]) + sorted(
        n for i in range(loaded.config.num_hidden_layers)
        for n in module_names(loaded.arch, i).values() if keep(n))
    manifest["seconds"] = round(time.perf_counter() - start, 2)
    return QuantizationResult(codes, manifest)


def check_streamable(cfg: QuantConfig) -> None:
    """A streamed build (--stream) holds one decoder layer's float weights at a time: every
    method streams (RTN as the engine is written; AWQ, GPTQ, AWQ-GPTQ and FP8 layer by layer)
    except FP8 distillation, which fine-tunes the whole model against a float copy of it."""
    if isinstance(cfg, Fp8Config) and cfg.distill_steps:
        raise InputError(f"FP8 distillation (--distill-steps {cfg.distill_steps}) fine-tunes the whole model "
                         "against a float copy of it, and a streamed build (--stream) holds one decoder layer "
                         "at a time", hint="drop --distill-steps (distillation is off by default) to stream the "
                                           "FP8 calibration, or drop --stream to distill in memory")


def quantize_rtn(loaded: Any, cfg: RtnConfig, keep: Callable[[str], bool], codes: dict, manifest: dict,
                 quiet: bool, progress: Progress | None = None) -> None:
    """Round every target linear to nearest: no calibration (nothing to resume)."""
    if loaded.streamed:  # computed as the engine is written (calibration.deferred)
        for name in target_linears(loaded, keep):
            codes[name] = deferred_rtn(loaded.weights, name + ".weight", cfg.spec)
        return
    with torch.no_grad():
        for name, lin in target_linears(loaded, keep).items():
            store_quantized(lin, rtn_quantize(lin.weight, cfg.spec), name, codes)


def quantize_calibrated(loaded: Any, cfg: Calibrated, keep: Callable[[str], bool], codes: dict, manifest: dict,
                        quiet: bool, progress: Progress | None = None, *, step: Callable[..., None],
                        float_stream: bool = False) -> list[torch.Tensor]:
    """Run the calibration windows through the model layer by layer (sequential.py), `step`
    quantizing each layer on its inputs; records the windows in the manifest and returns the
    quantized model's last hidden states. With `progress`, each finished layer is kept on disk
    and, resuming, the layers kept there are restored instead of calibrated again."""
    windows = calibration_windows(loaded, cfg)
    device = calibration_device(cfg.calib_device)
    manifest["calibration"] = {"spec": cfg.calib, "windows": list(windows.shape),
                               "tokens": int(windows.size), "sha256": windows_hash(windows), "device": device}
    restore, finished = kept_layers(loaded, cfg, manifest, codes, progress, quiet) if progress else (None, None)

    def quantize_layer(work: LayerWork) -> None:
        step(work, cfg=cfg, codes=codes, arch=loaded.arch)
        for name in work.names.values():  # the codes leave the device with their layer
            if name in codes:
                codes[name] = tensors_to_cpu(codes[name])

    changed: dict[str, torch.Tensor] = {}  # a streamed model: what its layers became, but the codes

    def leaving(work: LayerWork) -> None:
        prefix = loaded.arch.layer_prefix.format(i=work.index)
        for name, param in work.layer.named_parameters():
            if (prefix + name).removesuffix(".weight") not in codes:
                changed[prefix + name] = param.detach().clone()

    hidden = run_sequential(loaded.model, loaded.arch, windows, cfg.batch_size, quantize_layer, keep, quiet,
                            float_stream=float_stream, restore=restore, finished=finished, device=device,
                            hold=loaded.hold, leaving=leaving if loaded.streamed else None)
    if loaded.streamed:  # norms (AWQ's scales fold into them), biases, linears kept in float
        loaded.override_weights(changed)
    return hidden


def calibration_device(requested: str) -> str:
    """`auto`: cuda where torch sees a GPU, else cpu."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def tensors_to_cpu(record: Any) -> Any:
    """A dataclass of codes (QuantizedLinear, Fp8Linear) with its tensors on the CPU."""
    moved = {f.name: getattr(record, f.name).cpu() for f in dataclasses.fields(record)
             if isinstance(getattr(record, f.name), torch.Tensor)}
    return dataclasses.replace(record, **moved) if moved else record


def kept_layers(loaded: Any, cfg: Calibrated, manifest: dict, codes: dict, progress: Progress, quiet: bool):
    """run_sequential's (restore, finished) over a LayerStore at progress.directory."""
    fingerprint = {"quantization": cfg.to_manifest(), "calibration": manifest["calibration"],
                   "source": loaded.source, "layers": loaded.config.num_hidden_layers}
    store = LayerStore(progress.directory, fingerprint, progress.resume)
    if store.finished and not quiet:
        console().print(f"  resuming: {store.finished} finished layers kept at {progress.directory}")
    prefix = loaded.arch.layer_prefix.format

    def restore(work: LayerWork) -> bool:
        if work.index >= store.finished:
            return False
        store.restore(work.index, prefix(i=work.index), work.layer, codes)
        return True

    def finished(work: LayerWork) -> None:
        store.save(work.index, prefix(i=work.index), work.layer, codes)

    return restore, finished


def quantize_fp8(loaded: Any, cfg: Fp8Config, keep: Callable[[str], bool], codes: dict, manifest: dict,
                 quiet: bool, progress: Progress | None = None) -> list[torch.Tensor]:
    """Calibrate FP8 layer by layer, then, with distill_steps, fine-tune against the float model.
    A streamed model calibrates as the integer methods do (quantize_calibrated: each layer read
    for its own turn, its codes and changed parameters kept); it cannot distill (check_streamable)."""
    teacher = copy.deepcopy(loaded.model) if cfg.distill_steps else None  # the float model
    hidden = quantize_calibrated(loaded, cfg, keep, codes, manifest, quiet, step=fp8_layer,
                                 float_stream=cfg.float_stream)
    if teacher is not None:
        manifest["distillation"] = distill(loaded, teacher, codes, cfg, quiet)
    return hidden


def distill(loaded: Any, teacher: torch.nn.Module, codes: dict, cfg: Fp8Config, quiet: bool) -> dict[str, Any]:
    """Fine-tune the FP8 weights against the float model on cfg.distill_data (distill.py)."""
    windows = calibration_windows(loaded, cfg, cfg.distill_data)
    record = distill_fp8(loaded.model, teacher, codes, windows, cfg.distill_steps, cfg.distill_lr,
                         cfg.distill_batch, cfg.distill_device, quiet=quiet)
    return {"data": {"spec": cfg.distill_data, "windows": list(windows.shape), "sha256": windows_hash(windows)},
            **record}


def quantize_lm_head(loaded: Any, cfg: IntWeightConfig, codes: dict[str, QuantizedLinear],
                     hidden: list[torch.Tensor] | None = None) -> tuple[str, bool]:
    """Quantize the output projection: by GPTQ against the final norm's outputs when the
    quantized model's last hidden states on the calibration text are given (methods gptq and
    awq-gptq), else by RTN (no calibration: the reference tools quantize it this way).

    A head tied to the embeddings stays tied: the shared table takes the quantized values,
    and its codes are recorded under the embedding's name, so the engine stores them once
    (the lm_head's MatMulNBits and the embedding's GatherBlockQuantized read the same bytes).
    Returns the method used and whether the embedding shares the head's codes."""
    head = loaded.model.get_output_embeddings()
    name = loaded.arch.lm_head.removesuffix(".weight")
    if head is None or loaded.model.get_submodule(name) is not head:
        raise InputError("this model has no separate output projection to quantize",
                         hint="drop lm_head_bits / --lm-head-bits")
    if loaded.streamed:  # parameters on the meta device: the config says
        tied = output_tied(loaded.config)
    else:
        tied = head.weight.data_ptr() == loaded.model.get_input_embeddings().weight.data_ptr()
    if tied:
        name = loaded.arch.embed.removesuffix(".weight")  # the table both read
    if loaded.streamed and hidden is None:  # RTN, computed as the engine is written
        codes[name] = deferred_rtn(loaded.weights, name + ".weight", cfg.lm_head_spec)
        return "rtn", tied
    norm = module_name(loaded.model, loaded.model.model.norm)
    with torch.no_grad(), loaded.hold(module_name(loaded.model, head)), loaded.hold(norm):
        if hidden is None:
            q, method = rtn_quantize(head.weight, cfg.lm_head_spec), "rtn"
        else:
            hessian = HessianAccumulator(head.in_features)
            for h in hidden:
                hessian.add(loaded.model.model.norm(h))
            q, method = gptq_quantize(head.weight, hessian.H, cfg.lm_head_spec, act_order=cfg.act_order,
                                      damp=cfg.damp), "gptq"
        store_quantized(head, q, name, codes)  # a tied table: the embedding takes the values too
    return method, tied


def module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


# configuration class -> its algorithm: (loaded, cfg, keep, codes, manifest, quiet, progress) ->
# the quantized model's last hidden states on the calibration windows, or None
ALGORITHMS: dict[type[QuantConfig], Callable[..., list[torch.Tensor] | None]] = {
    RtnConfig: quantize_rtn,
    AwqConfig: partial(quantize_calibrated, step=awq_layer),
    GptqConfig: partial(quantize_calibrated, step=gptq_layer),
    AwqGptqConfig: partial(quantize_calibrated, step=awq_gptq_layer),
    Fp8Config: quantize_fp8,
}
