"""Building engines: `optimize model`, `schema`, `passes`, `build-trt`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from optimizer.core.progress import console
from optimizer.options import SECTIONS, cli_options, given_overrides, section_values, with_fast_int4


@click.command("model")
@click.argument("source", required=False)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Engine directory to write.")
@click.option("--recipe", type=click.Path(path_type=Path), help="A recipe YAML (recipes/); flags override its values.")
@click.option("--random-weights", is_flag=True, help="Build from --config with random weights (no download).")
@click.option("--config", "config", help="With --random-weights: a preset name or a config.json path.")
@click.option("--tokenizer", type=click.Path(path_type=Path),
              help="With --random-weights: a tokenizer folder or .gguf to ship in the engine.")
@click.option("--seed", default=0, show_default=True, help="Seed for random weights.")
@click.option("--dump-ir-after", multiple=True,
              help="Write the graph after this pass (repeatable, or 'all') as text to OUT.ir/.")
@cli_options("build")  # every field of optimizer.options.BuildSection
@cli_options("quantization")  # every field of optimizer.options.QuantSection
@click.option("--max-ppl-increase", default=None,
              help="Accuracy gate: fail (exit 6) when the engine's perplexity exceeds the source model's by "
                   "more than this, relative (3%) or absolute (0.5); the engine is still written, marked failing.")
@click.option("--gate-eval", default=None, help="Text the gate measures, SOURCE:NxL [default: wiki:20x512].")
@click.option("--int4-defaults", type=click.Choice(["fast", "exact"]), default="fast", show_default=True,
              help="What --quant int4 builds where no format flag says otherwise: fast = on --target onnxruntime, "
                   "zero points (--asym), an 8-bit lm_head (a tied embedding shares its codes) and int8 "
                   "activation compute (--accuracy-level 4); exact = the flags' own defaults (symmetric, float "
                   "lm_head, fp32 compute). Flags given always win; a --recipe is taken as written.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--resume", is_flag=True, help="Continue a killed AWQ/GPTQ build from the layers it finished (kept "
                                             "beside --out until the engine is written); same command otherwise.")
@click.option("--trust-remote-code", is_flag=True, help="Allow code shipped with the model to run.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def model_cmd(source: str | None, out: Path, recipe: Path | None, random_weights: bool, config: str | None,
              tokenizer: Path | None, seed: int, dump_ir_after: tuple[str, ...], max_ppl_increase: str | None,
              gate_eval: str | None, int4_defaults: str, overwrite: bool, resume: bool, trust_remote_code: bool,
              quiet: bool,
              **options: Any) -> None:
    """Build a verified engine from a HuggingFace folder, a .gguf file, or a named config."""
    from optimizer.pipeline import BuildOptions, build_engine
    from optimizer.recipes import Recipe, load_recipe, quant_config_from

    base = load_recipe(recipe) if recipe else Recipe()
    overrides = {name: given_overrides(name, options) for name in SECTIONS}
    if not recipe and int4_defaults == "fast":
        overrides = with_fast_int4(overrides)
    resolved = base.merged(overrides)
    engine = build_engine(BuildOptions(
        **section_values(resolved.build), out=out, source=source, random_weights=random_weights, config=config,
        tokenizer=str(tokenizer) if tokenizer else None, seed=seed, overwrite=overwrite, resume=resume,
        trust_remote_code=trust_remote_code, quant=quant_config_from(resolved.quantization),
        dump_ir_after=dump_ir_after, recipe=resolved.to_dict(), architecture=resolved.architecture,
        max_ppl_increase=max_ppl_increase, **({"gate_eval": gate_eval} if gate_eval else {}), quiet=quiet))
    if not quiet:
        console().print(f"[green]engine written:[/green] {engine.path}")


@click.command("random-checkpoint")
@click.argument("config")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The checkpoint folder to write.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True)
@click.option("--shard-size", default="2GB", show_default=True, help="Largest shard (at most this much is in memory).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def random_checkpoint_cmd(config: str, out: Path, dtype: str, shard_size: str, seed: int, overwrite: bool) -> None:
    """Write a random-weight safetensors checkpoint of a preset (e.g. llama-3.1-8b) or config.json shape,
    shard by shard: real sizes for building and calibrating without a model hub."""
    from optimizer.models.loader import resolve_config
    from optimizer.models.random_checkpoint import write_random_checkpoint

    path = write_random_checkpoint(resolve_config(config), out, dtype, shard_size, seed, overwrite)
    console().print(f"[green]checkpoint written:[/green] {path}")


@click.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of recipe files (for editors and CI checks)."""
    from optimizer.recipes import recipe_schema

    click.echo(json.dumps(recipe_schema(), indent=2))


@click.command("passes")
def passes_cmd() -> None:
    """List the graph passes: what each rewrites, which targets run it, and the pipelines."""
    from passes import PIPELINES, REGISTRY

    for info in REGISTRY.values():
        click.echo(f"{info.name:24s} {info.description}")
        click.echo(f"{'':24s} targets: {', '.join(info.targets)}"
                   + (f"; after: {', '.join(info.after)}" if info.after else ""))
    click.echo("")
    for name, names in PIPELINES.items():
        click.echo(f"pipeline {name}: {', '.join(names) or '(no passes)'}")


@click.command("build-trt")
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="The TensorRT plan file to write.")
@click.option("--workspace-gb", default=8.0, show_default=True, help="TensorRT builder workspace limit.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def build_trt_cmd(engine_dir: Path, out: Path, workspace_gb: float, overwrite: bool, quiet: bool) -> None:
    """Build a TensorRT plan from an engine made with `optimize model ... --target tensorrt`
    (needs the tensorrt package and an NVIDIA GPU; strongly typed, the manifest's profiles)."""
    from optimizer.tensorrt import build_plan

    summary = build_plan(engine_dir, out, workspace_gb=workspace_gb, quiet=quiet, overwrite=overwrite)
    if not quiet:
        console().print(f"[green]plan written:[/green] {summary['plan']} ({summary['bytes'] / 1e6:.1f} MB, "
                        f"TensorRT {summary['tensorrt_version']}, profiles {', '.join(summary['profiles'])}, "
                        f"{summary['seconds']:.0f} s)")
