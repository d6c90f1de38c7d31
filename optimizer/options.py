"""Build and quantization options, each declared once.

A field of `BuildSection` or `QuantSection` is the whole declaration of an option: its type,
default and help (and, where they are not plain, its choices and command-line spelling). From
these classes come, without restating a field:

- the `optimize model` flags and their help (`cli_options`, `given_overrides`);
- the recipe sections `build:` and `quantization:` (optimizer.recipes: unknown keys are errors
  naming the closest valid key) and their JSON Schema (`recipe_schema`, `optimize schema`);
- the build input: `optimizer.pipeline.BuildOptions` extends `BuildSection`;
- the manifest's `recipe` section (the resolved recipe, as a dict).

Adding an option is two edits: the field here, and the code that uses it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from optimizer.core.engine_format import LAYOUTS
from optimizer.core.errors import InputError
from optimizer.core.quant_defaults import BITS, CALIB_DEVICES, DEFAULTS, DISTILL_DEVICES, OBSERVERS

# onnxruntime: kernels of onnxruntime's CPU and CUDA providers; onnxruntime-cuda: may use
# CUDA-only kernels (FP8: MatMulBlockQuantizedFp8Weight), verified on the CUDA provider;
# tensorrt: standard ONNX ops only, for TensorRT's ONNX parser
TARGETS = ("onnxruntime", "onnxruntime-cuda", "tensorrt")


@dataclass(frozen=True)
class Option:
    """How a field appears on the command line and in the recipe schema."""

    help: str
    choices: tuple[Any, ...] | None = None  # allowed values (the recipe schema's enum too)
    flag: str | None = None  # the click declaration when not --field-name (e.g. "--sym/--asym")
    parse: Callable[[Any], Any] | None = None  # command-line text -> value, where not the type's own
    what: str | None = None  # its name in error messages (default: the field's name)


def opt(default: Any, help: str, *, choices: tuple[Any, ...] | None = None, flag: str | None = None,
        parse: Callable[[Any], Any] | None = None, what: str | None = None) -> Any:
    """A dataclass field carrying its Option."""
    meta = {"option": Option(help, choices, flag, parse, what)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _lm_head_bits(text: str) -> int | None:
    return None if text == "none" else int(text)


@dataclass(frozen=True, kw_only=True)
class BuildSection:
    """How the graph is built: the recipe's `build:` section."""

    dtype: str = opt("fp32", "Compute dtype.", choices=("fp32", "fp16"))  # optimizer.capture.DTYPES
    passes: str | list[str] | None = opt(
        None, "'default' (all fusions), 'unfused', 'none', or comma-separated pass names (see `optimize "
              "passes`) [default: the target's pipeline: default; paged for the paged KV layout with float "
              "weights (gate/up unpacked); tensorrt for --target tensorrt].")
    target: str = opt("onnxruntime", "onnxruntime (its fused kernels, CPU and CUDA), onnxruntime-cuda (may use "
                                     "CUDA-only kernels: FP8 -> MatMulBlockQuantizedFp8Weight; built and verified "
                                     "where CUDA is), or tensorrt: standard ONNX ops only, for `optimize build-trt`.",
                      choices=TARGETS)
    accuracy_level: int = opt(0, "MatMulNBits compute: 0 = fp32, 4 = int8 activations (faster, less exact; "
                                 "--quant int4's default on --target onnxruntime, see --int4-defaults).")
    max_seq_len: int | None = opt(None, "Longest sequence a fused engine supports [default: the model's maximum].")
    external_data: str = opt("auto", "Weights in model.onnx.data.", choices=("auto", "always", "never"),
                             what="external-data mode")
    kv_layout: str = opt("auto", "KV-cache interface: static slots written in place, paged blocks (CUDA only, "
                                 "--dtype fp16; built where CUDA is), or concat; auto = static where attention "
                                 "is fused.", choices=("auto", *LAYOUTS), what="KV-cache layout")
    kv_slots: int | None = opt(None, "Static/paged layouts: sequences batched together [default: 16].")
    kv_capacity: int | None = opt(None, "Static layout: positions per slot (prompt + output); paged: the pool "
                                        "holds slots x capacity positions [default: min(max seq len, 1024)].")
    kv_block_size: int | None = opt(None, "Paged layout: tokens per block [default: the size onnxruntime's flash "
                                          "kernel reads in place at the model's head size: 128 at head sizes "
                                          "65-128, 256 up to 64, 64 above].")
    kv_blocks: int | None = opt(None, "Paged layout: blocks in the pool [default: slots x capacity / block size].")
    kv_cache_dtype: str = opt("auto", "KV-cache storage: auto = the engine's dtype; int8 or fp8 (E4M3) with one "
                                      "static scale per layer for K and V, calibrated on --kv-calib: int8 for the "
                                      "static or concat layout (onnxruntime's CPU attention kernel), fp8 for the "
                                      "paged layout (PagedAttention on CUDA).", choices=("auto", "int8", "fp8"),
                              what="KV-cache dtype")
    kv_calib: str = opt("c4:32x512", "int8 / fp8 KV cache: calibration text SOURCE:NxL.")
    stream: bool = opt(False, "Keep the weights on disk: read the safetensors (or GGUF) tensor by tensor, quantize "
                              "(RTN: as the engine file is written; AWQ / GPTQ / FP8: one layer in memory at a time) "
                              "and verify layer by layer, for models larger than memory.")

    def pipeline(self) -> str | list[str]:
        """The passes to run: as given, else the target's own pipeline."""
        if self.passes is not None:
            return self.passes
        return "tensorrt" if self.target == "tensorrt" else "default"


@dataclass(frozen=True, kw_only=True)
class QuantSection:
    """How the weights are quantized: the recipe's `quantization:` section."""

    # quant and method: checked where they are used (optimizer.recipes.quant_config_from,
    # calibration.config.quant_config), whose errors name the valid values; the defaults shared
    # with the quantization configurations come from optimizer.core.quant_defaults
    quant: str = opt("none", "Quantization: none, int4, int8 (weights), fp8 (W8A8 E4M3).")
    method: str = opt(DEFAULTS["method"], "Quantization method: rtn, awq, gptq, awq-gptq (AWQ's scaling, then GPTQ "
                                          "rounding); with --quant fp8, gptq rounds the FP8 weights by GPTQ.")
    group_size: int = opt(DEFAULTS["group_size"], "Quantization group size; 0 = per-channel.")
    symmetric: bool = opt(DEFAULTS["symmetric"], "Symmetric weights (no zero points) or asymmetric (--quant "
                                                 "int4 on --target onnxruntime: --asym, see --int4-defaults).",
                          flag="--sym/--asym")
    act_order: bool = opt(DEFAULTS["act_order"], "GPTQ, AWQ-GPTQ: quantize columns in decreasing Hessian order.")
    calib: str = opt(DEFAULTS["calib"], "Calibration text SOURCE:NxL (c4, wiki, tiny, or a .txt/.jsonl/.parquet "
                                        "file).")
    calib_seed: int | None = opt(DEFAULTS["calib_seed"], "Draw calibration windows at random with this seed.")
    calib_allow_fewer: bool = opt(DEFAULTS["calib_allow_fewer"], "Too little calibration text: warn and go on.")
    calib_device: str = opt(DEFAULTS["calib_device"], "Where AWQ/GPTQ/FP8 calibrate, one decoder layer at a time: "
                                                      "auto = cuda when torch sees a GPU, else cpu.",
                            choices=CALIB_DEVICES)
    keep: list[str] = opt([], "Module-name pattern kept in float (repeatable); embeddings always are.")
    lm_head_bits: int | None = opt(DEFAULTS["lm_head_bits"], "Also quantize the output projection (none = keep it "
                                                             "in float; --quant int4 on --target onnxruntime: 8, "
                                                             "see --int4-defaults).",
                                   choices=(*BITS, None), parse=_lm_head_bits)
    observer: str = opt(DEFAULTS["observer"], "FP8: how calibration picks the activation scales.", choices=OBSERVERS)
    smooth: float | None = opt(DEFAULTS["smooth"], "FP8: migrate activation outliers into the weights first "
                                                   "(SmoothQuant), strength alpha in [0, 1], e.g. 0.3 [default: off].")
    distill_steps: int = opt(DEFAULTS["distill_steps"], "FP8: after calibration, fine-tune the weights against the "
                                                        "float model for N steps (distillation with the FP8 rounding "
                                                        "in the loop; slow on CPU); 0 = off.")
    distill_lr: float = opt(DEFAULTS["distill_lr"], "FP8 distillation: learning rate.")
    distill_batch: int = opt(DEFAULTS["distill_batch"], "FP8 distillation: windows per step.")
    distill_data: str = opt(DEFAULTS["distill_data"], "FP8 distillation: training text SOURCE:NxL.")
    distill_device: str = opt(DEFAULTS["distill_device"], "FP8 distillation: where the steps run.",
                              choices=DISTILL_DEVICES)

SECTIONS: dict[str, type] = {"build": BuildSection, "quantization": QuantSection}

# `optimize model --quant int4` without format flags (--int4-defaults fast), per target: the
# format benchmarks/int4_defaults.py found faster and no less accurate than the fields' own
# defaults on both packaged models (benchmarks/results/int4-defaults/). SmolLM2-135M, 2 threads,
# batch 1: 148.7 decode tok/s against 100.6, 93.5 MB against 175.3, wiki perplexity 29.435
# against 32.516; Gemma-3-270M: 324 MB against 791, perplexity 23.944 against 26.936 (wiki 10x512).
# Groups of 128 decode faster still (169.3 tok/s on SmolLM2) but cost Gemma 17% perplexity.
# Targets not listed (onnxruntime-cuda, tensorrt) keep the fields' defaults; so does
# --int4-defaults exact.
FAST_INT4: dict[str, dict[str, dict[str, Any]]] = {
    "onnxruntime": {"quantization": {"symmetric": False, "lm_head_bits": 8},
                    "build": {"accuracy_level": 4}},
}


def with_fast_int4(overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Command-line overrides ({section: {field: value}}) completed with FAST_INT4's values for
    the fields they leave out, where they ask for int4 on a target that has a fast format."""
    if overrides.get("quantization", {}).get("quant") != "int4":
        return overrides
    target = overrides.get("build", {}).get("target", BuildSection.target)
    fast = FAST_INT4.get(target, {})
    return {name: {**fast.get(name, {}), **overrides.get(name, {})} for name in {*overrides, *fast}}


def option_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "option" in f.metadata]


def check_choices(section: Any) -> None:
    """Every field with choices holds one of them (recipes and the Python API; click checks flags)."""
    for f in option_fields(type(section)):
        option, value = f.metadata["option"], getattr(section, f.name)
        if option.choices is not None and value not in option.choices:
            names = ", ".join("none" if c is None else str(c) for c in option.choices)
            raise InputError(f"unknown {option.what or f.name.replace('_', ' ')} {value!r}",
                             hint="choose one of: " + names)


def section_values(section: Any) -> dict[str, Any]:
    """A section's values by field name (e.g. to build BuildOptions from a recipe's build section)."""
    return {f.name: getattr(section, f.name) for f in option_fields(type(section))}


# -- the command line ---------------------------------------------------------------------------
def _flag(f: dataclasses.Field) -> str:
    return f.metadata["option"].flag or "--" + f.name.replace("_", "-")


def _default_text(f: dataclasses.Field) -> str:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    option = f.metadata["option"]
    if "[default:" in option.help or default is None:
        return ""
    if isinstance(default, bool) and option.flag:
        default = option.flag.split("/")[0 if default else 1]
    elif isinstance(default, bool) or default == []:
        return ""
    return f" [default: {default}]"


def cli_options(section: str) -> Callable[[Callable], Callable]:
    """A decorator adding one click option per field of the section; each defaults to None
    (not given), so recipe values stand unless a flag overrides them."""
    import click

    hints = typing.get_type_hints(SECTIONS[section])

    def decorate(command: Callable) -> Callable:
        for f in reversed(option_fields(SECTIONS[section])):
            option = f.metadata["option"]
            help_text = option.help + _default_text(f)
            kind = _scalar(hints[f.name])
            if option.flag and "/" in option.flag:
                command = click.option(option.flag, f.name, default=None, help=help_text)(command)
            elif kind is bool:
                command = click.option(_flag(f), f.name, is_flag=True, default=None, help=help_text)(command)
            elif kind is list:
                command = click.option(_flag(f), f.name, multiple=True, help=help_text)(command)
            else:
                choices = None if option.choices is None else click.Choice(
                    ["none" if c is None else str(c) for c in option.choices])
                click_type = choices or {int: int, float: float}.get(kind, str)
                command = click.option(_flag(f), f.name, default=None, type=click_type, help=help_text)(command)
        return command

    return decorate


def given_overrides(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """The section's values a command line gave (click's None or empty tuple: not given)."""
    out = {}
    for f in option_fields(SECTIONS[section]):
        raw = values.get(f.name)
        if raw is None or raw == ():
            continue
        parse = f.metadata["option"].parse
        out[f.name] = parse(raw) if parse else (list(raw) if isinstance(raw, tuple) else raw)
    return out


def _scalar(hint: Any) -> type:
    """The field's value type, ignoring None: bool, int, float, str or list."""
    options = [a for a in _union_args(hint) if a is not type(None)]
    first = options[0]
    return list if typing.get_origin(first) is list else first


def _union_args(hint: Any) -> tuple[Any, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


# -- the recipe schema --------------------------------------------------------------------------
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def field_schema(f: dataclasses.Field, hint: Any) -> dict[str, Any]:
    option = f.metadata.get("option")
    kinds = []
    for arg in _union_args(hint):
        if typing.get_origin(arg) is list:
            kinds.append({"type": "array", "items": {"type": "string"}})
        else:
            kinds.append({"type": _JSON_TYPES[arg]})
    schema: dict[str, Any] = kinds[0] if len(kinds) == 1 else {"anyOf": kinds}
    if option is not None:
        schema["description"] = option.help
        if option.choices is not None:
            schema["enum"] = list(option.choices)
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if default is not dataclasses.MISSING:
        schema["default"] = default
    return schema


def section_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {"type": "object", "additionalProperties": False, "description": (cls.__doc__ or "").strip(),
            "properties": {f.name: field_schema(f, hints[f.name]) for f in dataclasses.fields(cls)}}
