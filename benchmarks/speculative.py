"""Speculative-decoding benchmark: an input-grounded workload at batch 1 (outputs that copy long
spans of the prompt), ours with speculation off and on, and llama.cpp's server without and with
its n-gram speculation, on the same model and threads (CPU), in one run.

    python benchmarks/speculative.py --engine ENGINE --out bench-spec/ [--draft DRAFT_ENGINE] \
        [--llama-server /path/to/llama-server --gguf SmolLM2-135M-Instruct.Q4_1.gguf]

Workload (`code_edit_prompts`): source files of this repository (runtime/*.py, read locally),
each cut to about `--prompt-tokens` tokens, as a code-editing request: the original file, then
"the same file, edited" and its first lines, so the model goes on to rewrite it; `--output-tokens`
greedy tokens with EOS ignored, one request at a time (batch 1). A request's decode speed is
(output tokens - 1) / (last token time - first token time); the table gives the median over
requests of each system's best round (`--rounds` alternating runs) with the spread of the rounds.

Systems: ours without speculation; ours with prompt lookup (`--ks`, one row per k); with
`--draft` ours with that draft engine (e.g. SmolLM2 int4 drafting for its fp32 engine);
llama-server (one slot) plain and with each `--llama-spec` setting. Greedy tokens of ours with
and without speculation must be equal (checked; exit 1 if not); llama.cpp's tokens are compared
with ours without speculation and the share that agree is reported (its int4 kernels differ).
Results: OUT/results.json (with the command line) and OUT/table.md. `--step-costs` instead
times one decode step and verification steps of 1+k tokens (OUT/step_costs.*).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

from _results import write_results  # benchmarks/ is on the path when run as a script
from runtime import Engine, SamplingParams, SpeculativeConfig
from runtime.executors import make_executor
from runtime.sequence import Sequence

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("runtime/scheduler.py", "runtime/kv_cache.py", "runtime/sequence.py", "runtime/sampling.py",
           "runtime/metrics.py", "runtime/async_engine.py")


def code_edit_prompts(tokenizer, prompt_tokens: int, files=SOURCES) -> list[list[int]]:
    """One code-editing prompt per file: the file (about `prompt_tokens` tokens of it), then
    the start of its edited copy."""
    prompts = []
    for name in files:
        ids = tokenizer((REPO / name).read_text()).input_ids[:prompt_tokens]
        code = tokenizer.decode(ids)
        head = "\n".join(code.splitlines()[:3])
        text = (f"# {name}, original:\n{code}\n\n# {name}, edited: the same file with the docstrings "
                f"shortened; everything else unchanged:\n{head}\n")
        prompts.append(tokenizer(text).input_ids)
    return prompts


def _ngram(setting: str) -> SpeculativeConfig:
    """"k" or "k/n": prompt lookup of k tokens from matches of n (default 1) to 3 tokens."""
    k, _, n = setting.partition("/")
    return SpeculativeConfig("ngram", int(k), ngram_min=int(n or 1), ngram_max=max(3, int(n or 1)))


def run_ours(engine: Engine, prompts: list[list[int]], output_tokens: int, spec: SpeculativeConfig | None,
             capacity: int) -> dict:
    llm = engine.llm(max_batch=1, capacity=capacity, speculative=spec)
    llm.warmup()
    base = (llm.total_drafted_tokens, llm.total_accepted_tokens, llm.total_decode_rows, llm.total_decode_tokens)
    speeds, outputs = [], []
    params = SamplingParams(max_new_tokens=output_tokens, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        seq = llm.make_sequence(prompt, params, f"r{i}", detokenize=False)
        llm.run([seq])
        speeds.append((len(seq.output_ids) - 1) / (seq.finish_time - seq.first_token_time))
        outputs.append(seq.output_ids)
    drafted, accepted, rows, tokens = (now - then for now, then in zip(
        (llm.total_drafted_tokens, llm.total_accepted_tokens, llm.total_decode_rows, llm.total_decode_tokens), base))
    name = "ours, no speculation" if spec is None else (
        f"ours, prompt lookup k={spec.num_tokens}, n={spec.ngram_min}..{spec.ngram_max}" if spec.method == "ngram" else
        f"ours, draft engine k={spec.num_tokens}")
    return {"system": name, "speeds": speeds, "outputs": outputs,
            "acceptance": accepted / drafted if drafted else None,
            "tokens_per_step": tokens / rows if rows else 1.0}


def _stream_llama(port: int, prompt: list[int], output_tokens: int) -> tuple[float, list[int]]:
    """One streamed greedy completion: decode tok/s after the first token, and the tokens."""
    from _servers import stream_completion  # httpx: not needed (nor installed) where no peer runs

    first, last, tokens = stream_completion(port, prompt, output_tokens, cache_prompt=False)
    return (len(tokens) - 1) / (last - first), tokens


def run_llama(binary: str, gguf: str, prompts: list[list[int]], output_tokens: int, threads: int,
              context: int, port: int, extra: list[str]) -> dict:
    from _servers import llama_server

    with llama_server(binary, gguf, threads, 1, context, port, cache_prompt=False, extra=extra) as command:
        _stream_llama(port, prompts[0][:64], 8)  # warm-up
        runs = [_stream_llama(port, p, output_tokens) for p in prompts]
    name = "llama.cpp server" + (f" ({' '.join(extra)})" if extra else ", no speculation")
    return {"system": name, "speeds": [s for s, _ in runs], "outputs": [t for _, t in runs],
            "command": shlex.join(command)}


def step_costs(engine: Engine, context: int = 500, drafts=(1, 2, 4, 8, 12), repeats: int = 20) -> dict[int, float]:
    """Median ms of one batch-1 step after `context` cached tokens: a decode (key 0) and a
    verification of 1 + k tokens (key k), each rolled back after."""
    executor = make_executor(engine.session, 1, context + max(drafts) + 2)
    executor.enable_speculation(max(drafts))
    seq = Sequence("probe", list(range(100, 100 + context)), SamplingParams(max_new_tokens=max(drafts) + 2))
    executor.pool.admit(seq.request_id, seq.max_total_tokens)
    executor.prefill(seq, 0, context)
    seq.output_ids.append(5)
    costs = {}
    for k in (0, *drafts):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            if k == 0:
                executor.decode([seq])
            else:
                executor.verify([seq], [[7] * k])
            times.append(time.perf_counter() - start)
            executor.rollback(seq, context)
        costs[k] = statistics.median(times) * 1e3
    return costs


def table(rows: list[dict], baseline: dict) -> str:
    lines = ["| system | decode tok/s, median of requests (rounds' range) | vs ours without speculation | "
             "acceptance | tokens per step | tokens as ours without speculation |", "|---|---|---|---|---|---|"]
    base = baseline["median"]
    for r in rows:
        same = sum(a == b for a, b in zip(r["outputs"], baseline["outputs"]))
        accept = f"{r['acceptance']:.2f}" if r.get("acceptance") is not None else "-"
        per_step = f"{r['tokens_per_step']:.2f}" if "tokens_per_step" in r else "-"
        lines.append(f"| {r['system']} | {r['median']:.1f} ({min(r['round_medians']):.1f}-{max(r['round_medians']):.1f}) "
                     f"| {r['median'] / base:.2f}x | {accept} | {per_step} | {same} of {len(r['outputs'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", required=True, help="our engine directory (static layout)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--draft", help="a draft engine with the same tokenizer (e.g. int4 for an fp32 --engine)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--provider", default="cpu", choices=("cpu", "cuda"),
                    help="where our engines run (cuda: decode steps from captured graphs, verification eager)")
    ap.add_argument("--prompt-tokens", type=int, default=768)
    ap.add_argument("--output-tokens", type=int, default=192)
    ap.add_argument("--ks", default="4,8", help="prompt-lookup settings, one row each: k, or k/n for drafts "
                                                  "only from matches of at least n tokens")
    ap.add_argument("--draft-k", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs of every system; the best of each")
    ap.add_argument("--llama-server", help="llama.cpp's llama-server binary")
    ap.add_argument("--gguf", help="the GGUF model for llama-server")
    ap.add_argument("--llama-spec", action="append", default=[],
                    help="llama-server speculation flags, one setting per use (a row each)")
    ap.add_argument("--port", type=int, default=8091)
    ap.add_argument("--step-costs", action="store_true",
                    help="only time a decode step and verification steps of 1+k tokens (batch 1)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    engine = Engine.load(args.engine, provider=args.provider, threads=args.threads)
    if args.step_costs:
        costs = step_costs(engine)
        text = "batch-1 step after 500 cached tokens, median of 20: " + ", ".join(
            f"{'decode' if k == 0 else f'verify 1+{k}'} {ms:.2f} ms" for k, ms in costs.items()) + "\n"
        print(text)
        write_results(args.out, text, {"ms": costs}, names=("step_costs.md", "step_costs.json"))
        return
    prompts = code_edit_prompts(engine.tokenizer, args.prompt_tokens)
    capacity = max(map(len, prompts)) + args.output_tokens
    specs: list[SpeculativeConfig | None] = [None] + [_ngram(k) for k in args.ks.split(",")]
    if args.draft:
        specs.append(SpeculativeConfig("draft", args.draft_k, draft=Engine.load(args.draft, provider=args.provider,
                                                                                  threads=args.threads)))
    llama = [[]] + [shlex.split(s) for s in args.llama_spec] if args.llama_server and args.gguf else []
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for spec in specs:
            r = run_ours(engine, prompts, args.output_tokens, spec, capacity)
            runs.setdefault(r["system"], []).append(r)
        for extra in llama:
            r = run_llama(args.llama_server, args.gguf, prompts, args.output_tokens, args.threads,
                          capacity + 64, args.port, extra)
            runs.setdefault(r["system"], []).append(r)
    rows = []
    for system, rounds in runs.items():
        best = max(rounds, key=lambda r: statistics.median(r["speeds"]))
        rows.append({**best, "median": statistics.median(best["speeds"]),
                     "round_medians": [statistics.median(r["speeds"]) for r in rounds]})
    baseline = rows[0]
    differing = [r["system"] for r in rows if r["system"].startswith("ours") and r["outputs"] != baseline["outputs"]]
    summary = {"greedy_tokens_equal": not differing, "differing": differing,
               "speedup_over_ours_off": {r["system"]: r["median"] / baseline["median"] for r in rows}}
    text = (f"{len(prompts)} code-editing requests one at a time (batch 1): prompts of "
            f"{min(map(len, prompts))}-{max(map(len, prompts))} tokens, {args.output_tokens} greedy output tokens "
            f"each (EOS ignored), {args.provider}, {args.threads} threads, {args.rounds} alternating rounds\n\n"
            f"{table(rows, baseline)}\n\ngreedy tokens of ours equal with and without speculation: {not differing}\n")
    print(text)
    write_results(args.out, text, {"engine": str(args.engine), "summary": summary, "rows": rows})
    if differing:
        sys.exit(f"greedy tokens differ with speculation: {differing}")


if __name__ == "__main__":
    main()
