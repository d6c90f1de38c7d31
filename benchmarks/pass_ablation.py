"""Per-pass ablation of the graph pipeline on an int4 engine, side by side with
onnxruntime-genai's model-builder int4 engine of the same model, in one run (CPU, batch 1).

    python benchmarks/pass_ablation.py --model "$(optimize asset smollm2-135m)" --out bench-passes/ \
        --genai-python /path/to/genai-venv/bin/python --genai-engine /path/to/genai-int4/

Rows (engines are built once into --out and reused when their manifest exists):
  unfused               lower-quantized-matmul, cse, dead-code
  + <pass>              the previous row's pipeline plus one more pass, in pipeline order
                        (+ quantize-kv-cache: built with --kv-cache-dtype int8, which that
                        pass lowers; every row before it has a float KV cache)
  all passes, <format>  the full pipeline (int8 KV cache) with other weight formats (group,
                        symmetry, lm_head)
  onnxruntime-genai     the peer (its runtime, its engine), through benchmarks/genai_peer.py
  onnxruntime-genai, huge pages
                        the same, its weights given the 2 MiB pages our runtime asks for on CPU
                        (runtime/hugepages.py; our rows have them, as Engine.load does by default;
                        their effect on our engines, which one process cannot show since they
                        are process-wide: decode_speed.py with OPTIMIZER_HUGE_PAGES=0 and =1)

Weights: RTN int4, accuracy_level 4 (int8 activations), in the storage format of the
int4-awq/-gptq recipes (RECIPE_FORMAT; the method changes the values, not the kernels, so
RTN builds in seconds what AWQ builds in minutes). The engine rows run through
our runtime (static cache for fused attention, concat cache otherwise); each measure is
prefill of --prompt-tokens tokens and decode tokens/s over --new-tokens (EOS ignored).
Rounds interleave every row, so drift on a noisy machine hits all rows alike; the table
shows medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration import quant_config
from optimizer.models.loader import load_model
from optimizer.pipeline import BuildOptions, build_engine
from passes import DEFAULT_PIPELINE, UNFUSED_PIPELINE
from runtime import Engine, SamplingParams

FUSIONS = [p for p in DEFAULT_PIPELINE if p not in UNFUSED_PIPELINE]
GENAI_PEER = Path(__file__).with_name("genai_peer.py")


@dataclass(frozen=True)
class Format:
    group_size: int
    symmetric: bool
    lm_head_bits: int | None  # None: lm_head in float

    def __str__(self) -> str:
        lm = "float" if self.lm_head_bits is None else f"int{self.lm_head_bits}"
        return f"g{self.group_size} {'sym' if self.symmetric else 'asym'}, lm_head {lm}"


RECIPE_FORMAT = Format(64, False, 8)  # recipes/*-int4-awq.yaml, *-int4-gptq.yaml
# a float lm_head, larger groups and an int4 lm_head (faster, lossier: see recipes/README.md),
# and the peer's own format (groups of 32, symmetric, int4 lm_head)
OTHER_FORMATS = (Format(64, False, None), Format(128, False, 8), Format(128, False, 4), Format(128, True, 4),
                 Format(32, True, 4))


def variants() -> list[tuple[str, tuple[str, ...], Format]]:
    """(row name, passes, weight format)."""
    rows = [("unfused", UNFUSED_PIPELINE, RECIPE_FORMAT)]
    for i, name in enumerate(FUSIONS):
        passes = ("lower-quantized-matmul", *FUSIONS[:i + 1], "cse", "dead-code")
        rows.append((f"+ {name}", passes, RECIPE_FORMAT))
    rows += [(f"all passes, {fmt}", DEFAULT_PIPELINE, fmt) for fmt in OTHER_FORMATS]
    return rows


def kv_cache_dtype(passes: tuple[str, ...]) -> str:
    """int8 where the pipeline has the pass that lowers it."""
    return "int8" if "quantize-kv-cache" in passes else "auto"


def build_all(model: str, out: Path) -> dict[str, Path]:
    engines = {}
    for i, (name, passes, fmt) in enumerate(variants()):
        path = out / f"engine-{i:02d}"
        engines[name] = path
        if (path / "manifest.json").exists() and _built_as(path, passes, fmt):
            continue
        loaded = load_model(model, quiet=True)  # fresh: quantization edits the weights in place
        cfg = quant_config(method="rtn", bits=4, group_size=fmt.group_size, symmetric=fmt.symmetric,
                          lm_head_bits=fmt.lm_head_bits)
        build_engine(BuildOptions(out=path, source=model, passes=passes, quant=cfg, accuracy_level=4,
                                  kv_cache_dtype=kv_cache_dtype(passes), overwrite=True, quiet=True), loaded)
        print(f"built {name}: {path}", file=sys.stderr)
    return engines


def _built_as(path: Path, passes: tuple[str, ...], fmt: Format) -> bool:
    """Whether the engine in `path` has these passes, KV cache and weight format (else it is rebuilt)."""
    m = json.loads((path / "manifest.json").read_text())
    q = m.get("quantization") or {}
    kv = "int8" if m.get("kv_cache", {}).get("dtype") == "int8" else "auto"
    return ([p["name"] for p in m.get("passes", [])] == list(passes) and q.get("group_size") == fmt.group_size
            and q.get("symmetric") == fmt.symmetric and q.get("lm_head_bits") == fmt.lm_head_bits
            and kv == kv_cache_dtype(passes))


def time_engine(engine: Engine, prompt: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
    result = engine.generate_ids(prompt, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
    return result.prefill_seconds * 1e3, result.decode_tokens_per_second, result.token_ids


GENAI_ROWS = {"onnxruntime-genai int4 (model builder)": (),
              "onnxruntime-genai int4, huge pages": ("--huge-pages",)}


def time_genai(python: str, engine_dir: str, prompt_file: Path, new_tokens: int, threads: int,
               extra: tuple[str, ...] = ()) -> dict:
    cmd = [python, str(GENAI_PEER), engine_dir, "--prompt-ids", str(prompt_file),
           "--new-tokens", str(new_tokens), "--runs", "1", "--threads", str(threads), *extra]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF folder or .gguf of the model")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--genai-python", help="interpreter with onnxruntime-genai installed")
    parser.add_argument("--genai-engine", help="onnxruntime-genai model-builder int4 engine folder")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    engines = build_all(args.model, args.out)
    loaded = {name: Engine.load(path, threads=args.threads) for name, path in engines.items()}
    vocab = next(iter(loaded.values())).manifest["architecture"]["config"]["vocab_size"]
    prompt = np.random.default_rng(0).integers(100, vocab, args.prompt_tokens).tolist()
    prompt_file = Path(tempfile.mkstemp(suffix=".json")[1])
    prompt_file.write_text(json.dumps(prompt))

    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in loaded}
    tokens: dict[str, list[int]] = {}
    genai_rows: dict[str, list[tuple[float, float]]] = {name: [] for name in GENAI_ROWS}
    for name, engine in loaded.items():  # warm-up
        tokens[name] = time_engine(engine, prompt, args.new_tokens)[2]
    for r in range(args.rounds):
        for name, engine in loaded.items():
            prefill, decode, _ = time_engine(engine, prompt, args.new_tokens)
            samples[name].append((prefill, decode))
        for peer, extra in GENAI_ROWS.items():
            if args.genai_python and args.genai_engine:
                g = time_genai(args.genai_python, args.genai_engine, prompt_file, args.new_tokens, args.threads,
                               extra)
                genai_rows[peer].append((g["prefill_ms"], g["decode_tok_s"]))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    rows = []
    for name in loaded:
        m = loaded[name].manifest
        rows.append({"row": name, "prefill_ms": statistics.median(s[0] for s in samples[name]),
                     "decode_tok_s": statistics.median(s[1] for s in samples[name]),
                     "decode_rounds": [round(s[1], 1) for s in samples[name]],
                     "nodes": m["passes"][-1]["nodes_after"],
                     "same_tokens_as_unfused": tokens[name] == tokens["unfused"]})
    for peer, peer_samples in genai_rows.items():
        if peer_samples:
            rows.append({"row": peer, "prefill_ms": statistics.median(g[0] for g in peer_samples),
                         "decode_tok_s": statistics.median(g[1] for g in peer_samples),
                         "decode_rounds": [round(g[1], 1) for g in peer_samples], "nodes": None,
                         "same_tokens_as_unfused": None})
    report = {"threads": args.threads, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
              "rounds": args.rounds, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    print(render(report))


def render(report: dict) -> str:
    peers = [r for r in report["rows"] if r["row"].startswith("onnxruntime-genai")]
    lines = [f"batch 1, {report['prompt_tokens']}-token prompt, {report['new_tokens']} new tokens, "
             f"{report['threads']} threads, median of {report['rounds']} interleaved rounds", "",
             "| row | nodes | prefill ms | decode tok/s | " + " | ".join(f"vs {p['row']}" for p in peers)
             + " | greedy tokens = unfused |",
             "|---|---|---|---|" + "---|" * len(peers) + "---|"]
    for r in report["rows"]:
        ratios = "".join(f" {r['decode_tok_s'] / p['decode_tok_s']:.2f}x |" for p in peers)
        same = "-" if r["same_tokens_as_unfused"] is None else ("yes" if r["same_tokens_as_unfused"] else "no")
        lines.append(f"| {r['row']} | {r['nodes'] if r['nodes'] is not None else '-'} | {r['prefill_ms']:.1f} | "
                     f"{r['decode_tok_s']:.1f} |{ratios} {same} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
