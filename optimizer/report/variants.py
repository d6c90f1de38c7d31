"""The variants a report compares: named presets, or the recipes of a folder.

A variant is a recipe (optimizer.recipes.Recipe): its build and quantization sections become
the engine's BuildOptions exactly as `optimize model --recipe` would make them. The presets
are the usual deployment choices on CPU; calibrated methods use the report's --calib text.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path

from optimizer.core.errors import InputError
from optimizer.recipes import BuildSection, QuantSection, Recipe, load_recipe

_INT = dict(group_size=64, symmetric=False)  # asymmetric groups of 64: the better int4 RTN/AWQ/GPTQ here
_FAST = BuildSection(accuracy_level=4)  # MatMulNBits with int8 activations: onnxruntime's fast CPU path

PRESETS: dict[str, Recipe] = {
    "fp32": Recipe(name="fp32", description="float32 weights and compute"),
    "fp16": Recipe(name="fp16", description="float16 weights and compute", build=BuildSection(dtype="fp16")),
    "int8-rtn": Recipe(name="int8-rtn", description="int8 per-channel weights, round to nearest", build=_FAST,
                       quantization=QuantSection(quant="int8", method="rtn", group_size=0, symmetric=True)),
    "int4-rtn": Recipe(name="int4-rtn", description="int4 g64 asymmetric, round to nearest", build=_FAST,
                       quantization=QuantSection(quant="int4", method="rtn", **_INT)),
    "int4-awq": Recipe(name="int4-awq", description="int4 g64 asymmetric, AWQ", build=_FAST,
                       quantization=QuantSection(quant="int4", method="awq", **_INT)),
    "int4-gptq": Recipe(name="int4-gptq", description="int4 g64 asymmetric, GPTQ with act-order", build=_FAST,
                        quantization=QuantSection(quant="int4", method="gptq", act_order=True, **_INT)),
    "fp8": Recipe(name="fp8", description="FP8 W8A8 (E4M3), min-max activation scales",
                  quantization=QuantSection(quant="fp8", method="fp8", group_size=0, observer="minmax")),
}
DEFAULT_VARIANTS = ("fp32", "int8-rtn", "int4-rtn", "int4-awq", "int4-gptq", "fp8")


def preset_variants(names: list[str], calib: str | None = None) -> list[Recipe]:
    out = []
    for name in names:
        if name not in PRESETS:
            close = difflib.get_close_matches(name, list(PRESETS), n=1)
            raise InputError(f"unknown variant {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                             hint="variants: " + ", ".join(PRESETS) + "; or --recipe-dir with YAML recipes")
        recipe = PRESETS[name]
        if calib and recipe.quantization.quant != "none":
            recipe = replace(recipe, quantization=replace(recipe.quantization, calib=calib))
        out.append(recipe)
    return out


def recipe_variants(directory: Path, architecture: str) -> tuple[list[Recipe], list[str]]:
    """The folder's recipes for this architecture (others are skipped, with a note each)."""
    if not directory.is_dir():
        raise InputError(f"recipe folder {str(directory)!r} does not exist", hint="e.g. --recipe-dir recipes/")
    recipes, skipped = [], []
    for path in sorted(directory.glob("*.y*ml")):
        recipe = load_recipe(path)
        if recipe.architecture and recipe.architecture != architecture:
            skipped.append(f"{path.name} (for {recipe.architecture} models)")
        else:
            recipes.append(recipe)
    if not recipes:
        raise InputError(f"no recipe in {directory} is for {architecture} models",
                         hint=f"add a recipe with `architecture: {architecture}` (or none), or use --variants")
    return recipes, skipped
