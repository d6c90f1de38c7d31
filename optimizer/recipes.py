"""Recipes: versioned YAML files validated into frozen, typed configuration.

The sections are optimizer.options' BuildSection and QuantSection, where each option is
declared once (the command-line flags come from the same fields).

    version: 1
    name: llama-int4-awq
    description: ...
    architecture: llama            # optional: the build fails if the model is another family
    build:     {dtype: fp32, passes: default, target: onnxruntime, accuracy_level: 4, kv_layout: auto}
    quantization: {quant: int4, method: awq, group_size: 64, symmetric: false, lm_head_bits: 4, ...}

Every key is checked: an unknown one is an error naming it and the closest valid key.
Command-line flags override recipe values (`Recipe.merged`); the manifest stores the result.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from optimizer.core.errors import InputError
from optimizer.core.quant_defaults import BITS, DEFAULT_KEEP
from optimizer.options import SECTIONS, BuildSection, QuantSection, field_schema, section_schema, section_values

RECIPE_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    version: int = RECIPE_VERSION
    name: str = "cli"
    description: str = ""
    architecture: str | None = None
    build: BuildSection = field(default_factory=BuildSection)
    quantization: QuantSection = field(default_factory=QuantSection)

    def merged(self, overrides: Mapping[str, Mapping[str, Any]]) -> "Recipe":
        """A copy with {"build": {...}, "quantization": {...}} values replaced: the values a
        command line gave (optimizer.options.given_overrides), an explicit None included."""
        build = dataclasses.replace(self.build, **overrides.get("build", {}))
        quant = dataclasses.replace(self.quantization, **overrides.get("quantization", {}))
        return dataclasses.replace(self, build=build, quantization=quant)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def quant_config_from(qs: QuantSection) -> Any:
    """The calibration.config.QuantConfig a recipe's quantization section asks for (None: float).

    The section's quant, method, group_size and keep say what the configuration spells
    otherwise (--quant int4 -> bits 4, group size 0 -> per-channel, keep adds to the default
    patterns, fp8's --method -> its weight rounding); its other fields are the configuration's
    settings by the same names, refused where they do not apply (calibration.config.quant_config)."""
    from calibration.config import quant_config

    if qs.quant == "none":
        return None
    settings = {k: v for k, v in section_values(qs).items() if k not in ("quant", "method", "group_size", "keep")}
    settings["keep"] = DEFAULT_KEEP + tuple(qs.keep)
    if qs.quant == "fp8":
        if qs.method not in ("rtn", "fp8", "gptq"):  # rtn: the section's default, i.e. not given
            raise InputError(f"--quant fp8 rounds its weights to nearest or by GPTQ, not {qs.method}",
                             hint="drop --method, or use --method gptq, with --quant fp8")
        return quant_config("fp8", fp8_weights="gptq" if qs.method == "gptq" else "nearest", **settings)
    if qs.quant not in {f"int{b}" for b in BITS}:
        raise InputError(f"unsupported quantization {qs.quant!r}",
                         hint="choose one of: none, fp8, " + ", ".join(f"int{b}" for b in BITS))
    return quant_config(qs.method, bits=int(qs.quant[3:]), group_size=qs.group_size or None, **settings)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"recipe {str(path)!r} does not exist", hint="pass a YAML file, e.g. recipes/llama-int4-awq.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"recipe {path} is not valid YAML: {e}") from None
    return parse_recipe(data, str(path))


def parse_recipe(data: Any, where: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    version = data.get("version")
    if version != RECIPE_VERSION:
        raise InputError(f"{where}: unsupported recipe version {version!r}",
                         hint=f"this optimizer reads recipe version {RECIPE_VERSION}; set `version: {RECIPE_VERSION}`")
    return _build(Recipe, data, where)


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            raise InputError(f"{where}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                             hint="valid keys here: " + ", ".join(fields))
        values[key] = _typed(hints[key], value, f"{where}: {key}")
    return cls(**values)


def _typed(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if typing.get_origin(option) is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        if option is bool and isinstance(value, bool):
            return value
        if option in (int, str) and isinstance(value, option) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    names = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
    raise InputError(f"{where}: expected {names}, got {value!r}")


def recipe_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe file (for editors; `optimize schema` prints it)."""
    hints = typing.get_type_hints(Recipe)
    properties = {}
    for f in dataclasses.fields(Recipe):
        if f.name in SECTIONS:
            properties[f.name] = section_schema(SECTIONS[f.name])
        else:
            properties[f.name] = field_schema(f, hints[f.name])
    properties["version"] = {"const": RECIPE_VERSION}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "optimizer recipe",
            "type": "object", "additionalProperties": False, "required": ["version"], "properties": properties}
