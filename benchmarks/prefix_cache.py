"""Prefix-caching benchmark: a shared-system-prompt workload with automatic prefix caching off
and on, and llama.cpp's server with its prompt cache on the same model and threads (CPU).

    python benchmarks/prefix_cache.py --engine ENGINE --out bench-prefix/ \
        [--llama-server /path/to/llama-server --gguf SmolLM2-135M-Instruct.Q4_1.gguf]

Workload (optimizer.workload.make_shared_prefix_workload): 32 requests sharing a 512-token
prefix (the first tokens of the wiki text), each followed by its own 8..24-token suffix (the
text after it), 32 output tokens each with EOS ignored, all arriving at t=0. Each system gets
an untimed warm-up that does not contain the prefix.

Systems:
  ours, caching off / on   runtime.LLMEngine on ENGINE (optimizer.replay), in this process;
                           `--rounds` alternating off/on runs, the best round of each reported
  llama.cpp server         llama-server on the GGUF the engine was built from, with `--parallel`
                           slots (32, as ours, and 4: its prompt cache works across requests
                           when a slot's earlier prompt or its RAM prompt cache holds the
                           prefix, which a burst on 32 slots never finds), prompt cache on (its
                           default); prompts sent as token ids, streamed, greedy, EOS ignored

Every request's greedy tokens must be equal with caching off and on (checked, exit 1 if not).
`--check-alone` also runs each request alone (batch 1) and counts the requests whose tokens in
each run differ from their tokens alone: on an engine that is not batch-invariant (int4 with
`--accuracy-level 4`, see README Limits) batching alone changes some tokens, cache or not.
Results: OUT/results.json (with the command line) and OUT/table.md.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _results import write_results  # benchmarks/ is on the path when run as a script
from _servers import llama_server, stream_completion
from calibration.data import load_text
from optimizer.replay import replay
from optimizer.workload import Request, make_shared_prefix_workload, summarize
from runtime import Engine, SamplingParams


def run_ours(engine: Engine, requests: list[Request], caching: bool, max_batch: int, chunk: int) -> dict:
    result, llm = replay(engine, requests, max_batch, chunk, prefix_caching=caching)
    result.update(system=f"ours, prefix caching {'on' if caching else 'off'} ({llm.scheduler.max_running} slots)")
    return result


def _stream_llama(port: int, request: Request, start: float) -> tuple[float, float, list[int]]:
    """One streamed greedy completion of the request's token ids: (first token, last token) times
    since `start`, and the tokens."""
    return stream_completion(port, request.prompt, request.output_tokens, cache_prompt=True, start=start)


def _llama_workload(port: int, requests: list[Request]) -> tuple[dict, dict, dict, float]:
    """All requests at once, one connection each."""
    with ThreadPoolExecutor(len(requests)) as pool:
        start = time.perf_counter()
        done = list(pool.map(lambda r: _stream_llama(port, r, start), requests))
    first = {r.index: d[0] for r, d in zip(requests, done)}
    last = {r.index: d[1] for r, d in zip(requests, done)}
    outputs = {r.index: d[2] for r, d in zip(requests, done)}
    return first, last, outputs, max(last.values())


def run_llama_server(binary: str, gguf: str, requests: list[Request], warmup: list[Request], threads: int,
                     parallel: int, context: int, port: int) -> dict:
    with llama_server(binary, gguf, threads, parallel, context, port, cache_prompt=True) as command:
        _llama_workload(port, warmup)
        first, last, outputs, total = _llama_workload(port, requests)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stderr.strip().splitlines()
    result = summarize(requests, first, last, total, outputs)
    result.update(system=f"llama.cpp server ({parallel} slots, prompt cache on)", command=shlex.join(command),
                  version=version[0] if version else "")
    return result


def table(rows: list[dict]) -> str:
    lines = ["| system | total s | output tok/s | TTFT p50 / p99 s | TPOT p50 ms | cached prompt tokens |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cache = r.get("prefix_cache")
        cached = f"{cache['cached_tokens']} of {cache['queried_tokens']}" if cache and cache["queried_tokens"] else "-"
        lines.append(f"| {r['system']} | {r['total_s']:.2f} | {r['output_tok_s']:.1f} | "
                     f"{r['ttft_s_p50']:.3f} / {r['ttft_s_p99']:.3f} | {r['tpot_s_p50'] * 1e3:.1f} | {cached} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", required=True, help="our engine directory (32 slots of >= 568 positions)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--prefix-tokens", type=int, default=512)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--prefill-chunk", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2, help="alternating off/on runs of ours; the best of each")
    ap.add_argument("--llama-server", help="llama.cpp's llama-server binary")
    ap.add_argument("--gguf", help="the GGUF model for llama-server")
    ap.add_argument("--parallel", default="32,4", help="llama-server slots: one run per comma-separated value")
    ap.add_argument("--port", type=int, default=8089)
    ap.add_argument("--check-alone", action="store_true", help="count requests whose tokens differ from alone")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    engine = Engine.load(args.engine, threads=args.threads)
    corpus = engine.tokenizer(load_text("wiki")[:200_000]).input_ids
    requests = make_shared_prefix_workload(corpus, args.requests, args.prefix_tokens,
                                           output_tokens=args.output_tokens)
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(args.rounds):
        for caching in (False, True):
            runs[caching].append(run_ours(engine, requests, caching, args.max_batch, args.prefill_chunk))
    off, on = (max(runs[c], key=lambda r: r["output_tok_s"]) for c in (False, True))
    differing = [i for i in off["outputs"] if off["outputs"][i] != on["outputs"][i]]
    rows = [off, on]
    if args.llama_server and args.gguf:
        warmup = [Request(0, corpus[-64:], 8, 0.0)]  # not the shared prefix
        for parallel in map(int, args.parallel.split(",")):
            context = parallel * (args.prefix_tokens + 24 + args.output_tokens + 32)
            rows.append(run_llama_server(args.llama_server, args.gguf, requests, warmup, args.threads, parallel,
                                         context, args.port))
    summary = {"ttft_p50_off_over_on": off["ttft_s_p50"] / on["ttft_s_p50"],
               "output_tok_s_on_over_off": on["output_tok_s"] / off["output_tok_s"],
               "greedy_tokens_equal": not differing, "requests_differing": differing,
               "all_rounds_output_tok_s": {str(c): [r["output_tok_s"] for r in runs[c]] for c in (False, True)}}
    if args.check_alone:
        params = SamplingParams(max_new_tokens=args.output_tokens, ignore_eos=True)
        alone = {str(r.index): engine.generate_ids(r.prompt, params).token_ids for r in requests}
        summary["requests_differing_from_alone"] = {
            row["system"]: [i for i in alone if row["outputs"][i] != alone[i]] for row in (off, on)}
    for r in rows[2:]:
        summary[f"ours_on_over_{r['system']}"] = {"output_tok_s": on["output_tok_s"] / r["output_tok_s"],
                                                 "ttft_p50": r["ttft_s_p50"] / on["ttft_s_p50"]}
    text = (f"{len(requests)} requests: a {args.prefix_tokens}-token shared prefix + 8..24-token suffixes, "
            f"{args.output_tokens} output tokens each, all at t=0, {args.threads} threads\n\n{table(rows)}\n\n"
            f"prefix caching on vs off: TTFT p50 {summary['ttft_p50_off_over_on']:.2f}x lower, output tok/s "
            f"{summary['output_tok_s_on_over_off']:.2f}x; greedy tokens equal: {not differing}\n")
    for system, ids in summary.get("requests_differing_from_alone", {}).items():
        text += f"{system}: {len(ids)} of {len(requests)} requests differ from the request alone\n"
    print(text)
    write_results(args.out, text, {"engine": str(args.engine), "summary": summary, "rows": rows})
    if differing:
        sys.exit(f"greedy tokens differ between caching off and on for requests {differing}")


if __name__ == "__main__":
    main()
