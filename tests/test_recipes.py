"""Recipes: every shipped recipe validates; unknown keys and bad values are clear errors;
command-line flags override recipe values; the manifest stores the resolved recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from optimizer.cli import main
from optimizer.core.errors import InputError
from optimizer.core.architectures import ARCHITECTURES
from optimizer.options import given_overrides
from optimizer.recipes import Recipe, load_recipe, parse_recipe
from passes.pipeline import resolve_pass_names

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def test_one_recipe_per_architecture_and_kind():
    names = {p.stem for p in RECIPES}
    for arch in ("llama", "qwen2", "mistral", "gemma3"):
        for kind in ("fp16", "int4-awq", "int4-gptq", "int8"):
            assert f"{arch}-{kind}" in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem and recipe.architecture in ARCHITECTURES
    resolve_pass_names(recipe.build.passes)


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(InputError, match=r"unknown key 'grup_size' \(did you mean 'group_size'\?\)"):
        parse_recipe({"version": 1, "quantization": {"grup_size": 64}})
    with pytest.raises(InputError, match="unknown key 'bild'"):
        parse_recipe({"version": 1, "bild": {}})


def test_bad_values_and_versions():
    with pytest.raises(InputError, match="build: accuracy_level: expected int"):
        parse_recipe({"version": 1, "build": {"accuracy_level": "high"}})
    with pytest.raises(InputError, match="unsupported recipe version 2"):
        parse_recipe({"version": 2})


def test_flags_override_recipe_values():
    recipe = parse_recipe({"version": 1, "quantization": {"quant": "int4", "group_size": 32, "lm_head_bits": 4}})
    flags = given_overrides("quantization", {"group_size": 64, "method": None, "keep": (), "lm_head_bits": "none"})
    assert flags == {"group_size": 64, "lm_head_bits": None}  # not given: None / (); "none" is given
    merged = recipe.merged({"quantization": flags})
    assert merged.quantization.group_size == 64 and merged.quantization.method == "rtn"
    assert merged.quantization.lm_head_bits is None  # an explicit flag beats the recipe
    assert Recipe().build.passes is None  # the target's pipeline


def test_every_option_is_a_flag_and_a_recipe_key():
    """Each field of the build and quantization sections is declared once: it is a flag of
    `optimize model` (with its help and default) and a key of the recipe schema."""
    import dataclasses

    from optimizer.options import SECTIONS
    from optimizer.recipes import recipe_schema

    help_text = CliRunner().invoke(main, ["model", "--help"], terminal_width=200).output
    schema = recipe_schema()
    for section, cls in SECTIONS.items():
        keys = schema["properties"][section]["properties"]
        for f in dataclasses.fields(cls):
            flag = f.metadata["option"].flag or "--" + f.name.replace("_", "-")
            assert all(part in help_text for part in flag.split("/")), flag
            assert f.name in keys and keys[f.name]["description"] == f.metadata["option"].help
    assert "[default: 64]" in help_text  # --group-size's default, from the field
    assert schema["properties"]["build"]["properties"]["kv_layout"]["enum"] == ["auto", "concat", "static", "paged"]
    assert schema["properties"]["build"]["additionalProperties"] is False


def test_schema_command_prints_the_recipe_schema():
    import json

    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0 and json.loads(result.output)["properties"]["version"] == {"const": 1}


def test_recipes_take_floats_and_calib_allow_fewer():
    from optimizer.recipes import quant_config_from

    recipe = parse_recipe({"version": 1, "quantization": {"quant": "fp8", "smooth": 0.5, "calib_allow_fewer": True}})
    config = quant_config_from(recipe.quantization)
    assert config.smooth == 0.5 and config.calib_allow_fewer


def test_values_outside_a_fields_choices_are_refused():
    from optimizer.options import BuildSection, check_choices

    with pytest.raises(InputError, match="unknown KV-cache layout 'ring'") as e:
        check_choices(BuildSection(kv_layout="ring"))
    assert "auto, concat, static, paged" in e.value.hint


def test_dtype_choices_are_the_capture_dtypes():
    from optimizer.capture import DTYPES
    from optimizer.options import BuildSection, option_fields

    dtype = next(f for f in option_fields(BuildSection) if f.name == "dtype")
    assert tuple(dtype.metadata["option"].choices) == tuple(DTYPES)


def test_recipe_build_stores_resolved_recipe(tmp_path, smol_tokenizer_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"version": 1, "name": "tiny", "architecture": "llama",
                                      "build": {"passes": "unfused"},
                                      "quantization": {"quant": "int8", "group_size": 0}}))
    out = tmp_path / "engine"
    result = CliRunner().invoke(main, ["model", "--random-weights", "--config", "tiny-llama", "--tokenizer",
                                       str(smol_tokenizer_dir), "--recipe", str(recipe), "--passes", "default",
                                       "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "tiny"
    assert manifest["recipe"]["build"]["passes"] == "default"  # the flag won
    assert manifest["recipe"]["quantization"]["quant"] == "int8"
    assert manifest["quantization"]["bits"] == 8
    assert any(p["name"] == "fuse-attention" for p in manifest["passes"])


def test_recipe_for_another_architecture_is_refused(tmp_path, smol_tokenizer_dir):
    out = tmp_path / "engine"
    result = CliRunner().invoke(main, ["model", "--random-weights", "--config", "tiny-llama", "--tokenizer",
                                       str(smol_tokenizer_dir), "--recipe", "recipes/gemma3-int8.yaml",
                                       "--out", str(out), "-q"])
    assert result.exit_code == 2
    assert "the recipe is for gemma3 models, and this model is llama" in result.output
    assert not out.exists()


def test_passes_command_lists_passes_and_targets():
    result = CliRunner().invoke(main, ["passes"])
    assert result.exit_code == 0
    for needle in ("fuse-attention", "GroupQueryAttention", "targets: cpu, cuda", "pipeline default:"):
        assert needle in result.output
