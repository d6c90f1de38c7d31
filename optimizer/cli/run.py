"""Running engines: `optimize generate`, `serve`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from optimizer.cli.serve_limits import limit_options, server_limits
from optimizer.cli.serve_ray import ray_options, serve_on_ray, wants_ray
from optimizer.core.progress import console

# runtime options shared by `generate` and `serve`, each declared once
PREFIX_CACHING = click.option(
    "--prefix-caching/--no-prefix-caching", default=True, show_default=True,
    help="Automatic prefix caching: prompt tokens whose keys and values are already cached (a shared system "
         "prompt, earlier turns) are not computed again. Greedy output is the same either way (up to the batch "
         "variance of --accuracy-level 4 engines).")
SPECULATIVE = click.option(
    "--speculative", type=click.Choice(["ngram", "draft"]), default=None,
    help="Speculative decoding [default: off]: draft tokens by prompt lookup (ngram: the tokens that followed the "
         "sequence's last few tokens earlier in its prompt or output) or with a draft engine (draft, with "
         "--draft), and verify them in one step. Greedy output is the same; fastest when outputs copy the prompt.")
NUM_SPECULATIVE_TOKENS = click.option("--num-speculative-tokens", default=8, show_default=True,
                                      help="Tokens drafted per sequence and step (k).")
SPECULATIVE_MAX_BATCH = click.option(
    "--speculative-max-batch", default=1, show_default=True,
    help="Speculate only while at most this many sequences decode together (verification runs a call per "
         "sequence, or one for all on custom-ops engines with CachedAttention; at larger batches the batched "
         "decode step is faster on the CPU).")
DRAFT = click.option("--draft", "draft_dir", type=click.Path(path_type=Path), default=None,
                     help="The draft engine for --speculative draft (the same tokenizer as the target).")


def speculative_config(method: str | None, num_tokens: int, max_batch: int, draft_dir: Path | None,
                       provider: str, threads: int | None, verify: bool):
    """The speculative-decoding options as a SpeculativeConfig (None: off), the draft engine loaded."""
    from optimizer.core.errors import InputError
    from runtime import Engine, SpeculativeConfig

    if method is None:
        if draft_dir is not None:
            raise InputError("--draft needs --speculative draft")
        return None
    if (method == "draft") != (draft_dir is not None):
        raise InputError("--speculative draft takes a draft engine (--draft ENGINE_DIR), and only it does")
    draft = Engine.load(draft_dir, provider=provider, threads=threads, verify=verify) if draft_dir else None
    return SpeculativeConfig(method, num_tokens, draft=draft, max_batch=max_batch)


@click.command("generate")
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
@PREFIX_CACHING
@SPECULATIVE
@NUM_SPECULATIVE_TOKENS
@SPECULATIVE_MAX_BATCH
@DRAFT
def generate_cmd(engine_dir: Path, prompts: tuple[str, ...], prompts_file: Path | None, max_new_tokens: int,
                 temperature: float, top_k: int, top_p: float, seed: int | None, stop: tuple[str, ...],
                 min_tokens: int, ignore_eos: bool, max_batch: int | None, provider: str, threads: int | None,
                 no_verify: bool, prefix_caching: bool, speculative: str | None, num_speculative_tokens: int,
                 speculative_max_batch: int, draft_dir: Path | None) -> None:
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
    spec = speculative_config(speculative, num_speculative_tokens, speculative_max_batch, draft_dir, provider, threads,
                              not no_verify)
    if len(prompts) == 1:
        def emit(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        result = engine.generate(prompts[0], params, on_text=emit, speculative=spec)
        sys.stdout.write("\n")
        console().print(f"[dim]{result.prompt_tokens} prompt tokens, {len(result.token_ids)} generated "
                        f"({result.finish_reason}); prefill {result.prefill_seconds * 1e3:.0f} ms, "
                        f"decode {result.decode_tokens_per_second:.1f} tok/s[/dim]")
        return
    from runtime.batch_io import read_prompts

    items = read_prompts(prompts_file, params) if prompts_file else [(p, params) for p in prompts]
    results = engine.generate_batch([engine.encode(text) for text, _ in items], [p for _, p in items],
                                    max_batch=max_batch, prefix_caching=prefix_caching, speculative=spec)
    for index, ((text, _), r) in enumerate(zip(items, results)):
        click.echo(json.dumps({"index": index, "prompt": text, "text": r.text, "finish_reason": r.finish_reason,
                               "prompt_tokens": r.prompt_tokens, "completion_tokens": len(r.token_ids)},
                              ensure_ascii=False))


@click.command("serve")
@click.argument("engine_dir", type=click.Path(path_type=Path), required=False)
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
@click.option("--gpu-memory-fraction", default=None, type=click.FloatRange(0, 1, min_open=True),
              help="Paged engines on CUDA: size the KV block pool from this share of the GPU's memory, what "
                   "the engine and its largest step leave of it [default: the manifest's blocks].")
@click.option("--decode-steps", default=1, show_default=True, type=click.IntRange(min=1),
              help="Engines on CUDA with captured decode steps: greedy decode steps per host round trip while "
                   "no request waits, up to the engine's (runtime.multi_step; OPTIMIZER_DECODE_STEPS, default 8). "
                   "More is faster at large batches; a request arriving during a round waits for its end, and "
                   "streams get tokens in bursts of this many.")
@PREFIX_CACHING
@SPECULATIVE
@NUM_SPECULATIVE_TOKENS
@SPECULATIVE_MAX_BATCH
@DRAFT
@limit_options
@ray_options
def serve_cmd(engine_dir: Path | None, host: str, port: int, model_name: str | None, max_batch: int | None,
              prefill_chunk: int, provider: str, threads: int | None, no_verify: bool,
              allow_failed_gate: bool, gpu_memory_fraction: float | None, decode_steps: int, prefix_caching: bool,
              speculative: str | None, num_speculative_tokens: int, speculative_max_batch: int,
              draft_dir: Path | None, **limit_args) -> None:
    """Serve an engine over HTTP: OpenAI-compatible /v1/completions and /v1/chat/completions
    (SSE streaming), /health and /metrics (Prometheus), within the limits below; with --replicas
    or --engine, replicas of one or several engines on Ray Serve."""
    import uvicorn

    from optimizer.core.errors import InputError
    from runtime import Engine
    from runtime.async_engine import AsyncEngine
    from runtime.server import create_app

    ray_args = {k: limit_args.pop(k) for k in ("replicas", "engines", "ray_address", "min_replicas", "max_replicas",
                                               "max_ongoing_requests")}
    limits = server_limits(limit_args)
    if wants_ray(ray_args):
        if speculative or gpu_memory_fraction is not None:
            raise InputError("--speculative and --gpu-memory-fraction are not offered with Ray Serve replicas yet")
        return serve_on_ray(engine_dir, model_name, host, port, threads, provider, max_batch, prefill_chunk,
                            prefix_caching, not no_verify, allow_failed_gate, limits, ray_args, decode_steps)
    if engine_dir is None:
        raise InputError("give the ENGINE_DIR to serve (or --engine NAME=PATH, with Ray Serve)")
    if not limits.api_keys and host not in ("127.0.0.1", "localhost", "::1"):
        console().print(f"[yellow]warning:[/yellow] serving on {host} without --api-key: anyone who can reach "
                        "it can use it")
    engine = Engine.load(engine_dir, provider=provider, threads=threads, verify=not no_verify, quiet=False)
    gate = engine.manifest.get("gate")
    if gate and not gate["passed"]:
        from optimizer.gate import GateFailed, failure_message

        if not allow_failed_gate:
            raise GateFailed(f"refusing to serve: {failure_message(str(engine_dir), gate)}",
                             hint="rebuild with a better quantization, or pass --allow-failed-gate to serve it anyway")
        console().print(f"[yellow]warning:[/yellow] {failure_message(str(engine_dir), gate)} (served anyway)")
    spec = speculative_config(speculative, num_speculative_tokens, speculative_max_batch, draft_dir, provider, threads,
                              not no_verify)
    llm = engine.llm(max_batch=max_batch, prefill_chunk=prefill_chunk, prefix_caching=prefix_caching,
                     gpu_memory_fraction=gpu_memory_fraction, speculative=spec, decode_steps=decode_steps)
    server = AsyncEngine(llm).start()
    memory = getattr(llm.executor, "memory", None)
    if memory:
        console().print(f"KV cache: {memory['num_blocks']} blocks of {llm.executor.block_size} tokens, "
                        f"{memory['kv_gib']} GiB (--gpu-memory-fraction {memory['fraction']} of "
                        f"{memory['total_gib']} GiB; {memory['free_gib']} GiB were free after loading)")
    name = model_name or Path(engine_dir).resolve().name
    console().print(f"serving [bold]{name}[/bold] on http://{host}:{port}/v1 "
                    f"({llm.scheduler.max_running} sequences x {llm.max_tokens()} positions, "
                    f"prefix caching {'on' if llm.prefix_caching else 'off'}, speculative decoding "
                    f"{f'{spec.method}, k={spec.num_tokens}' if spec else 'off'}, decode steps per round "
                    f"{llm.max_decode_steps})")
    try:
        uvicorn.run(create_app(engine, server, name, limits), host=host, port=port, log_level="warning")
    finally:
        server.shutdown()
