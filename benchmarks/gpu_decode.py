"""GPU decode, side by side: our engines, transformers and onnxruntime-genai-cuda at real shapes.

    python benchmarks/gpu_decode.py --work /tmp/gd --results /tmp/gd/results.jsonl \
        --shapes llama-3.2-1b --formats fp16,int4 --phases bandwidth,build,ours,hf,genai \
        --concurrency 16,64,256

Every phase runs in a subprocess of its own (the GPU's memory is free again between phases;
a phase that fails is recorded and the next one runs) and appends one JSON line per
measurement to --results; the driver prints a table of them at the end. Random weights
throughout (speed does not depend on their values); greedy, EOS ignored, 128 prompt tokens
(ids in [100, 1000), numpy seed 0) and 128 new tokens.

  bandwidth  HBM bandwidth: a 2 GiB device-to-device copy, 20 times, read + write counted.
  build      our engines of each shape and format: --dtype fp16, max length 512, static layout
             with max(--concurrency) slots of 256 positions. fp16; int4 = RTN, group 32,
             symmetric, lm_head 4-bit, a tied embedding gathered from its codes
             (onnxruntime-genai's int4 format); int4-default = what plain `--quant int4`
             builds (optimizer.options.FAST_INT4: group 64 asymmetric, lm_head 8-bit,
             accuracy level 4); int4-g64 = symmetric blocks of 64, lm_head 4-bit (int4-sm90: in
             the layout of onnxruntime's Hopper kernel); int4-g64-head8 / int4-g64-headfp16:
             the same with an 8-bit / float lm_head; fp8 = --quant fp8
             --target onnxruntime-cuda (calibrated on 32 windows of 512 tokens of the packaged
             c4 text; the speed does not depend on the scales); fp16-paged = fp16 with the paged
             layout (blocks of 16 holding as many positions as the slots); fp16-paged-fp8kv = that
             with the K/V cache in float8 E4M3 (--kv-cache-dtype fp8, scales from 4 windows of 256
             c4 tokens: random weights, so only the speed means anything); fp16-custom = fp16
             with --passes custom-ops (our kernels, runtime/custom_ops: the Linear family for
             every linear, with the skip norms and SwiGLU folded in: one GEMV at 1-4 rows;
             cuBLAS above); fp16-swiglu = the default pipeline and fuse-swiglu only; int4-custom
             = int4 (genai's format) with --passes custom-ops (the LinearInt4 family: each
             MatMulNBits our 4-bit GEMV at 1-4 rows, its norm and SwiGLU folded in, o with the
             norm and gate/up after it and down with the next q/k/v as one op each),
             int4-custom-nochain the same with each 4-bit linear an op of its own; both with
             our CachedAttention for every layer's GroupQueryAttention (one kernel a layer),
             fp16-custom-gqa / int4-custom-gqa the same without it (onnxruntime's GQA).
  ours       each engine on onnxruntime's CUDA provider. Batch 1: Engine.generate_ids, one
             warm-up and --runs timed runs (median, min, max), with CUDA graphs and device
             sampling (the default) and without (cuda_graph=False). Then N concurrent requests
             (all at t=0) through the continuous-batching loop (optimizer.replay; with graphs,
             and also without where --eager-concurrency is given), --concurrent-runs times on one
             LLMEngine: output tok/s, TTFT and TPOT p50/p99 of the median run, each run's in
             `runs`. Also: bytes read per decode token (every initializer but those read only
             by Gather) and the share of the batch-1 bound they imply.
  hf         transformers bf16 (the model class of the shape): eager (DynamicCache) and static
             cache + torch.compile, generate() at batch 1 and at each N as a static batch.
  genai      onnxruntime-genai-cuda (needs it installed): its model builder on a random HF
             folder of the shape (fp16; int4 block 32 where "int4" is in --formats; fp16 with
             paged attention for its continuous-batching Engine), then
             benchmarks/genai_gpu_peer.py: Generator at batch 1 with and without CUDA graph,
             and the Engine with N concurrent requests.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _results import env_switches  # noqa: E402  (benchmarks/: this script's folder)

SHAPES = {  # transformers LlamaConfig fields of the shapes (as ../shared/gpu/hf_baseline.py)
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
}
PROMPT, NEW, MAX_LEN, CAPACITY = 128, 128, 512, 256


def prompts(n: int) -> list[list[int]]:
    return np.random.default_rng(0).integers(100, 1000, (n, PROMPT)).tolist()


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / statistics.median(values), "runs": values}


def median_run(summaries: list[dict]) -> dict:
    """Repeated runs of one workload as one record: the run of median output tok/s (the lower
    middle of an even count) with each run's output tok/s, TPOT p50 and TTFT p50 in `runs` and
    the spread of output tok/s ((max - min) / median of the runs)."""
    ranked = sorted(summaries, key=lambda s: s["output_tok_s"])
    record = dict(ranked[(len(ranked) - 1) // 2])
    record["runs"] = [{k: s[k] for k in ("output_tok_s", "tpot_s_p50", "ttft_s_p50")} for s in summaries]
    record["output_tok_s_spread"] = spread([s["output_tok_s"] for s in summaries])["spread"]
    return record


def emit(args, **record) -> None:
    record["t"] = time.strftime("%H:%M:%S")
    knobs = env_switches()
    if knobs:  # onnxruntime / runtime switches this run was made under
        record["env"] = knobs
    with open(args.results, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "runs"}), flush=True)


def engine_dir(args, shape: str, fmt: str) -> Path:
    return Path(args.work) / f"ours-{shape}-{fmt}"


# -- phases ------------------------------------------------------------------------------------
def phase_bandwidth(args) -> None:
    import torch

    a = torch.empty(2 * 1024 ** 3, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        b.copy_(a)
    torch.cuda.synchronize()
    emit(args, phase="bandwidth", gpu=torch.cuda.get_device_name(),
         hbm_GBps=20 * 2 * a.numel() / (time.perf_counter() - t0) / 1e9)


def phase_build(args) -> None:
    from calibration import quant_config
    from optimizer.core.assets import fetch_asset
    from optimizer.models.loader import load_model
    from optimizer.options import FAST_INT4
    from optimizer.pipeline import BuildOptions, build_engine
    from passes import DEFAULT_PIPELINE, PAGED_PIPELINE, PIPELINES

    slots = max(args.concurrency)
    for shape in args.shapes:
        t0 = time.perf_counter()
        # FP8 calibrates on text: SmolLM2's tokenizer (its ids fit every shape's vocabulary)
        tokenizer = fetch_asset("smollm2-135m", quiet=True) if any("fp8" in f for f in args.formats) else None
        loaded = load_model(None, random_weights=True, config=shape, tokenizer=tokenizer, quiet=True)
        emit(args, phase="build", shape=shape, step="load", seconds=time.perf_counter() - t0)
        for fmt in args.formats:  # fp16 first: int4 / fp8 change the loaded weights in place
            out = engine_dir(args, shape, fmt)
            if (out / "manifest.json").exists():
                continue
            common = dict(out=out, random_weights=True, config=shape, dtype="fp16", max_seq_len=args.max_len,
                          kv_layout="static", kv_slots=slots, kv_capacity=CAPACITY, quiet=True, overwrite=True)
            if fmt == "int4":
                opts = BuildOptions(**common, quant=quant_config(method="rtn", bits=4, group_size=32, lm_head_bits=4))
            elif fmt in ("int4-g64", "int4-sm90"):  # symmetric blocks of 64, lm_head too; int4-sm90: the weights
                sm90 = fmt == "int4-sm90"  # in the layout of onnxruntime's Hopper kernel (passes/prepack_int4.py)
                opts = BuildOptions(**common, quant=quant_config(method="rtn", bits=4, group_size=64, lm_head_bits=4),
                                    **(dict(target="onnxruntime-cuda", passes="int4-sm90") if sm90 else {}))
            elif fmt in ("int4-g64-head8", "int4-g64-headfp16"):  # symmetric blocks of 64, the lm_head 8-bit /
                head = 8 if fmt.endswith("8") else None  # float (the fields' own default)
                opts = BuildOptions(**common, quant=quant_config(method="rtn", bits=4, group_size=64, lm_head_bits=head))
            elif fmt == "int4-default":  # what plain `--quant int4` builds for --target onnxruntime
                fast = FAST_INT4["onnxruntime"]
                opts = BuildOptions(**common, **fast["build"], quant=quant_config(method="rtn", bits=4, **fast["quantization"]))
            elif fmt == "fp8":
                opts = BuildOptions(**common, quant=quant_config(method="fp8", calib="c4:32x512"),  # the c4 asset
                                    target="onnxruntime-cuda")
            elif fmt == "fp16-paged":  # the same positions as blocks (a pool the server may resize)
                opts = BuildOptions(**{**common, "kv_layout": "paged"}, kv_block_size=args.kv_block_size)
            elif fmt == "fp16-paged-mlp-packed":  # gate/up as one GEMM + Split (the paged default before
                opts = BuildOptions(**{**common, "kv_layout": "paged"}, kv_block_size=args.kv_block_size,
                                    passes=list(DEFAULT_PIPELINE))  # session 37, now passes.PAGED_PIPELINE's)
            elif fmt == "fp16-mlp-unpacked":  # the static layout with gate/up as two GEMMs (batch 1: the
                opts = BuildOptions(**common, passes=list(PAGED_PIPELINE))  # Split is 16 launches of 240)
            elif fmt == "fp16-custom":  # the static layout with our kernels (passes custom-ops: the Linear
                opts = BuildOptions(**common, passes="custom-ops")  # family with norms and SwiGLU folded in)
            elif fmt == "int4-custom":  # genai's int4 format through our LinearInt4 family
                opts = BuildOptions(**common, quant=quant_config(method="rtn", bits=4, group_size=32, lm_head_bits=4),
                                    passes="custom-ops")
            elif fmt == "int4-custom-nochain":  # int4-custom without custom-linear-chain (each 4-bit linear
                opts = BuildOptions(**common, quant=quant_config(method="rtn", bits=4, group_size=32, lm_head_bits=4),
                                    passes=[p for p in PIPELINES["custom-ops"] if p != "custom-linear-chain"])  # alone)
            elif fmt == "fp16-custom-nonorm":  # the custom-ops pipeline without custom-linear-norm
                opts = BuildOptions(**common, passes=[p for p in PIPELINES["custom-ops"] if p != "custom-linear-norm"])
            elif fmt in ("fp16-custom-gqa", "int4-custom-gqa"):  # ... without custom-attention (GQA's kernels)
                int4 = fmt.startswith("int4")
                quant = quant_config(method="rtn", bits=4, group_size=32, lm_head_bits=4) if int4 else None
                opts = BuildOptions(**common, quant=quant,
                                    passes=[p for p in PIPELINES["custom-ops"] if p != "custom-attention"])
            elif fmt == "fp16-swiglu":  # our SwiGLU op only
                opts = BuildOptions(**common, passes=[*DEFAULT_PIPELINE[:DEFAULT_PIPELINE.index("fold-constants")],
                                                      "fuse-swiglu", *DEFAULT_PIPELINE[DEFAULT_PIPELINE.index("fold-constants"):]])
            elif fmt == "fp16-paged-fp8kv":  # and K/V stored as float8 E4M3 (scales from a little c4 text:
                opts = BuildOptions(**{**common, "kv_layout": "paged"}, kv_block_size=args.kv_block_size,  # speed only)
                                    kv_cache_dtype="fp8", kv_calib="c4:4x256", tokenizer=str(tokenizer))
            else:
                opts = BuildOptions(**common)
            t0 = time.perf_counter()
            try:  # one format failing leaves the others to build
                engine = build_engine(opts, loaded)
            except Exception as e:
                emit(args, phase="build", shape=shape, format=fmt, error=f"{type(e).__name__}: {e}")
                continue
            emit(args, phase="build", shape=shape, format=fmt, seconds=time.perf_counter() - t0,
                 verification=engine.manifest["verification"])


def weight_bytes(model_path: Path) -> int:
    """Bytes a decode token reads: every initializer except those read only by Gather (an untied
    embedding reads one row per token)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    gather_only = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            gather_only[name] = gather_only.get(name, True) and node.op_type == "Gather" and i == 0
    total = 0
    for init in model.graph.initializer:
        if gather_only.get(init.name, False):
            continue
        size = int(np.prod(init.dims)) if init.dims else 1
        total += size * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    return total


def phase_ours(args) -> None:
    from optimizer.workload import Request
    from runtime import Engine, SamplingParams
    from runtime.gpu_memory import device_memory
    from optimizer.replay import replay

    params = SamplingParams(max_new_tokens=NEW, ignore_eos=True)
    for shape in args.shapes:
        for fmt in args.formats:
            path = engine_dir(args, shape, fmt)
            if not (path / "manifest.json").exists():
                emit(args, phase="ours", shape=shape, format=fmt, error="engine not built")
                continue
            nbytes = weight_bytes(path / "model.onnx")
            # int4 also at batch 1 on onnxruntime's one-row kernels (runtime.session.INT4_KERNELS)
            one_row = fmt.startswith("int4") and "custom" not in fmt  # MatMulNBits' kernels only
            variants = [(True, None), (False, None)] + ([(True, "one-row")] if one_row else [])
            for graph, kernels in variants:
                free_before = device_memory()[0] / 2**30  # GiB: where a variant fails to allocate, what was left
                engine = Engine.load(path, provider="cuda", cuda_graph=graph, int4_kernels=kernels)
                b1 = []
                prompt = prompts(1)[0]
                for run in range(args.runs + 1):
                    result = engine.generate_ids(prompt, params)
                    if run:
                        b1.append(result)
                tok_s = [r.decode_tokens_per_second for r in b1]
                emit(args, phase="ours", shape=shape, format=fmt, cuda_graph=graph, batch=1,
                     int4_kernels=engine.session.int4_kernels,
                     decode_tok_s=spread(tok_s), prefill_ms=statistics.median(r.prefill_seconds * 1e3 for r in b1),
                     weight_bytes=nbytes, first_tokens=b1[0].token_ids[:16], free_gib_before_load=free_before)
                if kernels is None and (graph or args.eager_concurrency):
                    for n in args.concurrency:
                        requests = [Request(i, p, NEW, 0.0) for i, p in enumerate(prompts(n))]
                        summaries, llm = [], None
                        for _ in range(args.concurrent_runs):  # the same LLMEngine: warmed up and captured once
                            summary, llm = replay(engine, requests, max_batch=n, capacity=CAPACITY, llm=llm)
                            summary.pop("outputs", None)
                            summaries.append(summary)
                        emit(args, phase="ours", shape=shape, format=fmt, cuda_graph=graph, concurrent=n,
                             host_sampled=getattr(llm.executor, "host_sampled", None),
                             preemptions=llm.scheduler.preemptions, **median_run(summaries))
                        del llm
                # the next variant's session needs its memory: after the captured 8B fp16 engine the
                # uncaptured one failed to allocate (run66-67, H100; on the CPU no reference cycle keeps
                # an engine alive after `del`, so whether collecting here frees it is not yet known:
                # free_gib_before_load records what the variant found)
                del engine
                gc.collect()


def phase_hf(args) -> None:
    import torch
    import transformers as t

    for shape in args.shapes:
        cfg = t.LlamaConfig(**SHAPES[shape], max_position_embeddings=4096)
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = t.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
        # bytes a decode token reads: every weight, but an untied embedding only by row
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        if not cfg.tie_word_embeddings:
            nbytes -= model.get_input_embeddings().weight.numel() * 2
        for compiled in (False, True):
            kwargs = dict(do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=0)
            if compiled:
                kwargs["cache_implementation"] = "static"  # transformers compiles the forward itself
            for batch in [1] + list(args.concurrency):
                if batch > args.hf_max_batch:
                    continue
                ids = torch.tensor(prompts(batch), device="cuda")
                one = {**kwargs, "max_new_tokens": 1, "min_new_tokens": 1}
                for _ in range(2):  # warm-up (and compile), same lengths as timed
                    model.generate(ids, **kwargs)
                    model.generate(ids, **one)
                times = []
                for _ in range(args.runs if batch == 1 else 1):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    model.generate(ids, **one)
                    torch.cuda.synchronize()
                    prefill = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    model.generate(ids, **kwargs)
                    torch.cuda.synchronize()
                    total = time.perf_counter() - t0
                    times.append((prefill, total))
                emit(args, phase="hf", shape=shape, compiled=compiled, batch=batch, weight_bytes=nbytes,
                     decode_tok_s=spread([batch * (NEW - 1) / (tot - pre) for pre, tot in times]),
                     output_tok_s=statistics.median(batch * NEW / tot for _, tot in times),
                     ttft_ms=statistics.median(pre * 1e3 for pre, _ in times))
        del model
        torch.cuda.empty_cache()


def _hf_folder(shape: str, folder: Path) -> None:
    """A random-weight transformers folder of the shape with a word-level tokenizer of its
    vocabulary (the genai builder loads one; its ids never matter here)."""
    import torch
    import transformers as t
    from tokenizers import Tokenizer, models, pre_tokenizers

    if (folder / "config.json").exists():
        return
    cfg = t.LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = t.LlamaForCausalLM(cfg).to(torch.float16)
    model.save_pretrained(folder, safe_serialization=True)
    vocab = {f"t{i}": i for i in range(cfg.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = t.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", bos_token="t1", eos_token="t2")
    fast.save_pretrained(folder)


def phase_genai(args) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from genai_gpu_peer import builder_command, builder_env

    peer = [sys.executable, str(ROOT / "benchmarks" / "genai_gpu_peer.py")]
    common = ["--prompt-len", str(PROMPT), "--new-tokens", str(NEW)]
    for shape in args.shapes:
        hf = Path(args.work) / f"hf-{shape}"
        _hf_folder(shape, hf)
        builds = [("fp16", False)] + ([("int4", False)] if "int4" in args.formats else []) + [("fp16", True)]
        for precision, paged in builds:
            out = Path(args.work) / f"genai-{shape}-{precision}{'-paged' if paged else ''}"
            if not (out / "genai_config.json").exists():
                t0 = time.perf_counter()
                done = subprocess.run(builder_command(str(hf), str(out), precision, paged=paged),
                                      env=builder_env(), capture_output=True, text=True)
                if done.returncode:
                    emit(args, phase="genai", shape=shape, precision=precision, paged=paged,
                         error="builder failed: " + done.stderr[-2000:])
                    continue
                emit(args, phase="genai", shape=shape, precision=precision, paged=paged, step="build",
                     seconds=time.perf_counter() - t0)
            runs = ([["--mode", "engine", "--requests", str(n)] for n in args.concurrency] if paged else
                    [["--mode", "b1", "--runs", str(args.runs), "--profile", "20"],
                     ["--mode", "b1", "--runs", str(args.runs), "--cuda-graph"]])
            for extra in runs:
                done = subprocess.run(peer + [str(out)] + common + extra, capture_output=True, text=True)
                record = dict(phase="genai", shape=shape, precision=precision, paged=paged, peer_args=extra,
                              weight_bytes=weight_bytes(out / "model.onnx"))
                if done.returncode:
                    emit(args, **record, error=done.stderr[-2000:])
                else:
                    emit(args, **record, **json.loads(done.stdout.strip().splitlines()[-1]))


PHASES = {"bandwidth": phase_bandwidth, "build": phase_build, "ours": phase_ours, "hf": phase_hf,
          "genai": phase_genai}


# -- driver ------------------------------------------------------------------------------------
def table(path: str) -> str:
    """One line per measurement: who, what, the figures that matter."""
    lines = []
    bw = None
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if r.get("phase") == "bandwidth" and "hbm_GBps" in r:
            bw = r["hbm_GBps"]
            lines.append(f"HBM copy bandwidth {bw:.0f} GB/s ({r['gpu']})")
            continue
        if "error" in r:
            lines.append(f"{r['phase']:9} {r.get('shape', '')} {r.get('format', r.get('precision', ''))}: "
                         f"ERROR {r['error'][:300]}")
            continue
        who = {"ours": lambda: f"ours {r['format']} graph={r['cuda_graph']}"
                           + (" one-row" if r.get("int4_kernels") == "one-row" else ""),
               "build": lambda: f"build {r.get('format', r.get('step', ''))}",
               "hf": lambda: f"hf {'compile' if r['compiled'] else 'eager'}",
               "genai": lambda: f"genai {r['precision']}{' paged' if r['paged'] else ''} "
                                + " ".join(r.get("peer_args", [r.get("step", "")])),
               }.get(r["phase"], lambda: r["phase"])()
        who += "".join(f" {k}={v}" for k, v in r.get("env", {}).items())
        figures = []
        if isinstance(r.get("decode_tok_s"), dict):
            d = r["decode_tok_s"]
            figures.append(f"decode {d['median']:.1f} tok/s ({d['min']:.1f}-{d['max']:.1f})")
        elif r.get("decode_tok_s") is not None:
            figures.append(f"decode {r['decode_tok_s']:.1f} tok/s")
        if r.get("weight_bytes") and bw and isinstance(r.get("decode_tok_s"), dict) and r.get("batch") == 1:
            bound = bw * 1e9 / r["weight_bytes"]
            figures.append(f"bound {bound:.0f} ({r['decode_tok_s']['median'] / bound:.0%})")
        for key in ("output_tok_s", "ttft_s_p50", "tpot_s_p50", "tpot_s_p99", "prefill_ms", "ttft_ms", "seconds"):
            if isinstance(r.get(key), (int, float)):
                figures.append(f"{key} {r[key]:.4g}")
        for key in ("ttft_ms", "tpot_ms", "prefill_ms"):  # the genai peer's {p50, p99} / {median, ...}
            if isinstance(r.get(key), dict):
                figures.append(f"{key} " + "/".join(f"{v:.4g}" for k, v in r[key].items() if k in ("p50", "p99", "median")))
        batch = r.get("batch") or r.get("concurrent") or r.get("requests")
        lines.append(f"{r.get('shape', ''):13} {who:40} b={batch or '-':<4} " + ", ".join(figures))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="engines, HF folders and genai builds (reused when present)")
    ap.add_argument("--results", required=True, help="JSON lines, appended")
    ap.add_argument("--shapes", default="llama-3.2-1b")
    ap.add_argument("--formats", default="fp16,int4")
    ap.add_argument("--phases", default="bandwidth,build,ours,hf,genai")
    ap.add_argument("--concurrency", default="16,64,256")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--concurrent-runs", type=int, default=3,
                    help="times each concurrent workload runs on one LLMEngine (the median run recorded, each run's "
                         "figures in `runs`)")
    ap.add_argument("--kv-block-size", type=int, default=None,
                    help="paged formats' block size [default: the build's, what onnxruntime's flash / XQA paged "
                         "kernels read in place: 128 at head size 128; benchmarks/results/gpu-throughput/README.md]")
    ap.add_argument("--max-len", type=int, default=MAX_LEN,
                    help="engines' maximum sequence length (2304 for benchmarks/throughput.py's 2048/128 and 128/2048)")
    ap.add_argument("--hf-max-batch", type=int, default=64, help="largest static batch timed for transformers")
    ap.add_argument("--eager-concurrency", action="store_true",
                    help="also run the concurrent workloads without CUDA graphs (ours)")
    ap.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase in this process
    args = ap.parse_args()
    args.shapes = args.shapes.split(",")
    args.formats = args.formats.split(",")
    args.concurrency = [int(n) for n in args.concurrency.split(",") if n]
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.phase:
        try:
            PHASES[args.phase](args)
        except Exception as e:
            emit(args, phase=args.phase, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
            raise
        return
    for name in args.phases.split(","):
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--phase", name] + [a for a in sys.argv[1:]]
        code = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
        print(f"== phase {name}: exit {code}, {time.perf_counter() - t0:.0f} s", flush=True)
    print(table(args.results))


if __name__ == "__main__":
    main()
