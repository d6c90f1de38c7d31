"""Time onnxruntime-genai-cuda 0.18 (its model builder's fp16 or int4 CUDA build) as a GPU speed peer.

Runs under an interpreter that has onnxruntime-genai-cuda installed (stdlib, numpy and
onnxruntime_genai only), for example on the GPU machine:

    python3 benchmarks/genai_gpu_peer.py ENGINE_DIR --mode b1 [--cuda-graph] \
        --prompt-len 128 --new-tokens 128 --runs 5
    python3 benchmarks/genai_gpu_peer.py ENGINE_DIR --mode batch --batch 16 --prompt-len 128 ...
    python3 benchmarks/genai_gpu_peer.py ENGINE_DIR --mode engine --requests 64 --prompt-len 128 ...

ENGINE_DIR is the builder's output folder (genai_config.json, model.onnx, ...); it is not
modified. --cuda-graph sets the cuda provider option enable_cuda_graph=1 in memory (see
load_model). Prompts are random token ids in [100, 1000) from numpy seed 0: row 0 is the b1
prompt, rows [0, batch) the batch, rows [0, requests) the engine's requests, so the first
request's greedy tokens can be compared across modes.

b1, batch  og.Generator, static batch, greedy, EOS ignored (min_length = max_length = prompt +
           new tokens). prefill_ms: append_tokens(prompts) until the first token is chosen;
           decode_tok_s: batch * (new_tokens - 1) tokens after it over their wall time. One
           untimed warm-up, then --runs runs: median, min and max of both. --profile STEPS adds
           the CUDA kernels of STEPS decode steps by name (benchmarks/gpu_kernels.py's summary;
           imports torch for its CUPTI profiler).
engine     og.Engine (continuous batching), all requests submitted at t=0, each with its own
           TurnOptions: greedy, exactly --new-tokens tokens (EOS masked by the minimum).
           output_tok_s = all generated tokens / time to the last one; per request TTFT = first
           token - t0 and TPOT = (last - first) / (tokens - 1); p50 and p99 of each. The same
           Engine first runs an untimed warm-up on other prompts (no prefix-cache hits).
           Continuous batching needs a paged build (use_paged_attention=true, which writes
           engine.dynamic_batching to genai_config.json); without it the Engine batches
           statically. "dynamic_batching" in the output says which one ran. b1 and batch
           want a build without it (a paged model takes packed 1-D input_ids).
Prints one JSON object on stdout.

Builds (builder_command below; the benchmark driver runs it as a subprocess): HF_DIR holds
config.json, the weights (random ones are fine) and a tokenizer, which the builder loads with
AutoTokenizer. It reads a local folder without the hub; builder_env() sets the offline flags
anyway and hf_token=false stops it from looking for a login:

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python3 -m onnxruntime_genai.models.builder \
        -i HF_DIR -o OUT -p fp16 -e cuda -c OUT.cache --extra_options hf_token=false
    ... -p int4 -e cuda ... --extra_options hf_token=false block_size=32     (32: genai's default)
    ... add use_paged_attention=true for --mode engine (max_batch_size defaults to 100)
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

try:
    import onnxruntime_genai as og
except ImportError:  # builder_command() stays importable where genai is not installed
    og = None


def builder_command(hf_dir, out_dir, precision, paged=False, python=sys.executable):
    """argv for onnxruntime-genai's model builder: fp16 or int4 (block 32), CUDA, offline."""
    extra = ["hf_token=false"]
    if precision == "int4":
        extra.append("block_size=32")
    if paged:  # its continuous-batching Engine; room for the benchmark's 256 concurrent requests
        extra += ["use_paged_attention=true", "max_batch_size=256"]
    return [python, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out_dir),
            "-p", precision, "-e", "cuda", "-c", f"{out_dir}.cache", "--extra_options", *extra]


def builder_env():
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def load_model(engine_dir, cuda_graph):
    config = og.Config(engine_dir)
    if cuda_graph:
        # genai_config.json keeps provider options as a list of one-key objects under
        # model.decoder.session_options: "provider_options": [{"cuda": {"enable_cuda_graph": "0"}}].
        # config.overlay('{"model": {"decoder": {"session_options": {"provider_options":
        # [{"cuda": {"enable_cuda_graph": "1"}}]}}}}') merges into the entry named "cuda", but it
        # appends the key after the builder's "0" instead of replacing it. set_provider_option
        # parses the same {"cuda": {...}} fragment after dropping the old key (and adds cuda to
        # the providers list if missing), so the session sees one enable_cuda_graph=1.
        config.set_provider_option("cuda", "enable_cuda_graph", "1")
    return og.Model(config)


def generator_run(model, prompts, new_tokens):
    batch, prompt_len = prompts.shape
    total = prompt_len + new_tokens
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, batch_size=batch, max_length=total, min_length=total)
    gen = og.Generator(model, params)

    t0 = time.perf_counter()
    gen.append_tokens(prompts)
    gen.generate_next_token()
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        gen.generate_next_token()
    t2 = time.perf_counter()

    ids = [int(t) for t in gen.get_sequence(0)[prompt_len:]]
    assert len(ids) == new_tokens, (len(ids), new_tokens)
    return {"prefill_ms": (t1 - t0) * 1e3,
            "decode_tok_s": batch * (new_tokens - 1) / (t2 - t1) if new_tokens > 1 else None,
            "generated_ids": ids}


def kernel_profile(model, prompts, steps):
    """The CUDA kernels of `steps` decode steps of one Generator, by name (torch's CUPTI
    profiler records every kernel of the process, genai's onnxruntime included; torch is
    imported only here). Same summary as benchmarks/gpu_kernels.py."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_kernels import kernel_summary

    batch, prompt_len = prompts.shape
    params = og.GeneratorParams(model)
    total = prompt_len + steps + 8
    params.set_search_options(do_sample=False, batch_size=batch, max_length=total, min_length=total)
    gen = og.Generator(model, params)
    gen.append_tokens(prompts)
    for _ in range(4):
        gen.generate_next_token()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            gen.generate_next_token()
        torch.cuda.synchronize()
    return kernel_summary(prof, steps)


def spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def engine_run(engine, prompts, new_tokens):
    flags = og.EngineEventFlags
    buffer = engine.create_event_buffer(2 * len(prompts) + 8)  # one step yields <= 1 event a request
    times, ids, index, cached = [[] for _ in prompts], [[] for _ in prompts], {}, 0

    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        options = og.RequestOptions()
        options.set_max_session_tokens(len(prompt) + new_tokens)
        request = engine.create_request(options=options)
        turn = og.TurnOptions(request)
        turn.set_do_sample(False)
        turn.set_max_generated_tokens(new_tokens)
        turn.set_min_generated_tokens(new_tokens)
        request.begin_turn(np.ascontiguousarray(prompt, dtype=np.int32), turn)
        index[request] = i
    for _ in range(len(prompts) * (prompts.shape[1] + new_tokens) + 1000):
        if not engine.has_pending_requests():
            break
        events = engine.run(buffer)
        now = time.perf_counter()
        for event in events:
            if event.flags & flags.FAILED:
                raise RuntimeError(f"engine failed: flags={event.flags} error={event.error_code}")
            if event.request is None:  # CAPACITY_BLOCKED / RETRYABLE: nothing committed, run again
                continue
            i = index[event.request]
            if event.flags & flags.TOKEN:
                times[i].append(now)
                ids[i].append(int(event.token))
            if event.flags & flags.TURN_FINISHED:
                cached += event.usage.cached_prompt_tokens
                event.request.close()
    else:
        raise RuntimeError("engine still had pending requests after its step budget")

    assert all(len(r) == new_tokens for r in ids), [len(r) for r in ids]
    ttft = [(t[0] - t0) * 1e3 for t in times]
    tpot = [(t[-1] - t[0]) * 1e3 / (len(t) - 1) for t in times if len(t) > 1]
    pct = lambda xs: dict(zip(("p50", "p99"), np.percentile(xs, [50, 99]).tolist())) if xs else None
    return {"output_tok_s": sum(map(len, ids)) / (max(t[-1] for t in times) - t0),
            "ttft_ms": pct(ttft), "tpot_ms": pct(tpot), "wall_s": max(t[-1] for t in times) - t0,
            "cached_prompt_tokens": cached, "generated_ids": ids[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engine_dir")
    ap.add_argument("--mode", choices=("b1", "batch", "engine"), default="b1")
    ap.add_argument("--cuda-graph", action="store_true", help="enable_cuda_graph=1, in memory")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5, help="timed runs (b1, batch)")
    ap.add_argument("--batch", type=int, default=16, help="rows of the static batch (batch)")
    ap.add_argument("--requests", type=int, default=64, help="concurrent requests (engine)")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="b1, batch: also profile the kernels of STEPS decode steps (needs torch with CUDA)")
    args = ap.parse_args()
    if og is None:
        sys.exit("onnxruntime_genai is not installed in this interpreter")

    rows = {"b1": 1, "batch": args.batch, "engine": args.requests}[args.mode]
    rng = np.random.default_rng(0)
    prompts = rng.integers(100, 1000, size=(rows, args.prompt_len), dtype=np.int32)
    config = json.loads((Path(args.engine_dir) / "genai_config.json").read_text())
    model = load_model(args.engine_dir, args.cuda_graph)
    result = {"mode": args.mode, "onnxruntime_genai": og.__version__, "cuda_graph": args.cuda_graph,
              "engine_dir": str(args.engine_dir), "prompt_tokens": args.prompt_len,
              "new_tokens": args.new_tokens}

    if args.mode == "engine":
        engine = og.Engine(model)
        caps = engine.get_capabilities()
        warm = rng.integers(100, 1000, size=(rows, args.prompt_len), dtype=np.int32)
        engine_run(engine, warm, min(args.new_tokens, 4))  # untimed: graphs, arenas, KV blocks
        result.update(engine_run(engine, prompts, args.new_tokens), requests=rows,
                      dynamic_batching=config.get("engine", {}).get("dynamic_batching"),
                      capabilities={k: getattr(caps, k) for k in (
                          "configured_max_batch_size", "max_scheduled_tokens", "max_request_length")})
    else:
        generator_run(model, prompts, args.new_tokens)  # warm-up
        runs = [generator_run(model, prompts, args.new_tokens) for _ in range(args.runs)]
        result.update(batch=rows, prefill_ms=spread([r["prefill_ms"] for r in runs]),
                      decode_tok_s=spread([r["decode_tok_s"] for r in runs])
                      if args.new_tokens > 1 else None,
                      runs=[{k: r[k] for k in ("prefill_ms", "decode_tok_s")} for r in runs],
                      generated_ids=runs[0]["generated_ids"])
        if args.profile:
            result["kernels"] = kernel_profile(model, prompts, args.profile)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
