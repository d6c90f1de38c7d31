"""Structured outputs on a real model: validity over random JSON schemas, and throughput with
the per-step token mask against the same workload without it (CPU, in this process).

    python benchmarks/structured_output.py --engine ENGINE --out bench-structured/ [--requests 100]

Workload: `--requests` random JSON schemas (seeded: nested objects, arrays with maxItems,
enums, integers with bounds, booleans, strings with maxLength, a random subset of required
fields, no additional properties), each sent as a chat request whose prompt shows the schema,
all arriving at once into runtime.LLMEngine (continuous batching over the engine's slots),
sampled at temperature 0.7 with a seed per request, at most `--max-tokens` tokens each.
`--prompt short` sends one short instruction instead (no schema in the prompt: little
prefill, so the decode steps, where the mask is computed and applied, take most of the time).

Runs, alternating for `--rounds` rounds (prefix caching off, so every round computes the
same prompts):
  structured     every request constrained by its schema (runtime.guided, llguidance); each
                 output must parse and validate against its schema (jsonschema), or exit 1
  unconstrained  the same prompts with no constraint, each request's max_tokens set to its
                 structured output's length and EOS ignored, so both runs generate exactly
                 the same number of tokens per request
An untimed warm-up round runs both first (and compiles every schema: `compile_s_first_round`);
timed rounds find them cached, and alternate which run goes first. Reported: wall seconds and output tokens/s of each run, medians and
spreads over the rounds, and the throughput ratio structured / unconstrained (target >= 0.8).
Results: OUT/results.json (with the command line) and OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

import jsonschema

from runtime import Engine
from runtime.guided import Constraint
from runtime.sampling import SamplingParams

WORDS = ["name", "city", "color", "size", "id", "count", "kind", "owner", "tags", "score", "level", "mode",
         "title", "email", "price", "status", "items", "meta", "flag", "note"]
VALUES = ["red", "green", "blue", "small", "large", "alpha", "beta", "on", "off", "north", "south", "cat", "dog"]


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    """A random object schema: 2-4 properties, nested objects and arrays up to depth 2."""
    props = {}
    for key in rng.sample(WORDS, rng.randint(2, 4)):
        props[key] = random_value(rng, depth)
    required = sorted(rng.sample(list(props), rng.randint(1, len(props))))
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def random_value(rng: random.Random, depth: int) -> dict:
    kinds = ["string", "integer", "boolean", "enum"] + (["object", "array"] if depth < 2 else [])
    kind = rng.choice(kinds)
    if kind == "string":
        return {"type": "string", "maxLength": rng.randint(4, 16)}
    if kind == "integer":
        low = rng.randint(-100, 100)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(1, 1000)}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "enum":
        return {"enum": rng.sample(VALUES, rng.randint(2, 4))}
    if kind == "object":
        return random_schema(rng, depth + 1)
    return {"type": "array", "items": random_value(rng, depth + 1), "minItems": rng.randint(0, 1),
            "maxItems": rng.randint(1, 3)}


def prompt_ids(engine: Engine, schema: dict, style: str) -> list[int]:
    content = ("Reply with a JSON object that follows this schema:\n" + json.dumps(schema) if style == "schema"
               else "Reply with a JSON object.")
    messages = [{"role": "user", "content": content}]
    ids = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids)


def run(llm, prompts: list[list[int]], params: list[SamplingParams]) -> tuple[float, float, list]:
    """(seconds building the sequences, seconds running them, the finished sequences)."""
    start = time.perf_counter()
    seqs = [llm.make_sequence(p, sp) for p, sp in zip(prompts, params)]
    built = time.perf_counter()
    llm.run(seqs)
    return built - start, time.perf_counter() - built, seqs


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", choices=("schema", "short"), default="schema",
                    help="schema: the prompt shows the schema (prefill-heavy); short: one short instruction "
                         "for all (decode-bound: the mask's cost is the largest share)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    engine = Engine.load(args.engine, threads=args.threads)
    llm = engine.llm(prefix_caching=False)
    rng = random.Random(args.seed)
    schemas = [random_schema(rng) for _ in range(args.requests)]
    prompts = [prompt_ids(engine, s, args.prompt) for s in schemas]
    llm.warmup()  # untimed: every batch shape once, so onnxruntime's arena has grown

    def structured_params() -> list[SamplingParams]:
        return [SamplingParams(max_new_tokens=args.max_tokens, temperature=0.7, seed=i,
                               constraint=Constraint("json_schema", json.dumps(s))) for i, s in enumerate(schemas)]

    rounds = []
    invalid: list[dict] = []
    for r in range(-1, args.rounds):  # round -1: untimed warm-up of both runs (compiles the schemas)
        unconstrained_first = r >= 0 and r % 2 == 1
        if unconstrained_first:  # odd rounds run the unconstrained workload first, with the previous round's lengths
            plain = [SamplingParams(max_new_tokens=n, temperature=0.7, seed=i, ignore_eos=True)
                     for i, n in enumerate(lengths)]
            _, u_time, useqs = run(llm, prompts, plain)
        compile_s, s_time, seqs = run(llm, prompts, structured_params())
        if r == -1:
            first_compile_s = compile_s
        lengths = [len(s.output_ids) for s in seqs]
        for i, (s, schema) in enumerate(zip(seqs, schemas)):
            try:
                jsonschema.validate(json.loads(s.text), schema)
            except (json.JSONDecodeError, jsonschema.ValidationError) as e:
                invalid.append({"round": r, "request": i, "finish_reason": s.finish_reason, "text": s.text,
                                "error": str(e)[:200]})
        if not unconstrained_first:
            plain = [SamplingParams(max_new_tokens=n, temperature=0.7, seed=i, ignore_eos=True)
                     for i, n in enumerate(lengths)]
            _, u_time, useqs = run(llm, prompts, plain)
        assert [len(s.output_ids) for s in useqs] == lengths  # (seeded: the same lengths every round)
        if r == -1:
            continue
        tokens = sum(lengths)
        rounds.append({"round": r, "output_tokens": tokens, "build_s": compile_s, "structured_s": s_time,
                       "unconstrained_s": u_time, "structured_tok_s": tokens / s_time,
                       "unconstrained_tok_s": tokens / u_time, "ratio": u_time / s_time,
                       "finish_reasons": {k: sum(s.finish_reason == k for s in seqs) for k in ("stop", "length")}})
        print(json.dumps(rounds[-1]), file=sys.stderr)
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "engine": str(Path(args.engine).resolve()), "requests": args.requests, "prompt": args.prompt,
        "rounds": rounds,
        "valid": f"{args.requests * args.rounds - len(invalid)}/{args.requests * args.rounds}",
        "invalid": invalid, "compile_s_first_round": first_compile_s,
        "structured_tok_s": spread([r["structured_tok_s"] for r in rounds]),
        "unconstrained_tok_s": spread([r["unconstrained_tok_s"] for r in rounds]),
        "ratio": spread([r["ratio"] for r in rounds]),
        "examples": [{"schema": schemas[i], "output": seqs[i].text} for i in range(min(3, len(seqs)))],
    }
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    rows = ["| round | output tokens | structured s | unconstrained s | structured tok/s | unconstrained tok/s | ratio |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {r['round']} | {r['output_tokens']} | {r['structured_s']:.2f} | {r['unconstrained_s']:.2f} | "
             f"{r['structured_tok_s']:.1f} | {r['unconstrained_tok_s']:.1f} | {r['ratio']:.3f} |" for r in rounds]
    rows.append(f"\nvalid outputs: {result['valid']}; schema compile + sequence build: first (warm-up) round "
                f"{first_compile_s:.2f} s, timed rounds (cached) {', '.join('%.2f' % r['build_s'] for r in rounds)} s; "
                f"ratio median {result['ratio']['median']:.3f} (min {result['ratio']['min']:.3f}, "
                f"max {result['ratio']['max']:.3f})")
    (out / "table.md").write_text(result["command"] + "\n\n" + "\n".join(rows) + "\n")
    print("\n".join(rows))
    if invalid:
        sys.exit(1)


if __name__ == "__main__":
    main()
