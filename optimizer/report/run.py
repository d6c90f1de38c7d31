"""`optimize report`, the measuring half: build (or reuse) each variant's engine, measure its
perplexity through the engine and its speed through the runtime, gate it against the
baseline, and write the report (optimizer.report.render), top to bottom:

    baseline first -> for each variant: engine (cached by identity) -> perplexity -> speed
    -> Pareto front and recommendation -> report.json / report.md / report.html

Perplexity is `optimizer.evaluate.evaluate` on the engine (the same code and windows as
`optimize eval`); speed runs in a child process per engine (optimizer.report.speed), one
after another, so each peak-memory figure is that engine's own and no two timings overlap.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimizer.core.errors import InputError, OptimizerError
from optimizer.gate import GateFailed, failure_message, parse_limit
from optimizer.core.progress import console, step
from optimizer.recipes import Recipe, quant_config_from
from optimizer.report.speed import SERVING_DEFAULTS


@dataclass
class ReportSettings:
    dataset: str = "wiki"
    windows: int = 40
    seq_len: int = 512
    prefill_tokens: int = 128
    decode_tokens: int = 64
    speed_runs: int = 3
    serving: dict[str, Any] | None = field(default_factory=lambda: dict(SERVING_DEFAULTS))
    max_batch: int = 16
    threads: int | None = None
    provider: str = "cpu"
    max_ppl_increase: str | None = None

    @property
    def eval_spec(self) -> str:
        return f"{self.dataset}:{self.windows}x{self.seq_len}"


def run_report(source: str, variants: list[Recipe], baseline: str, out: Path, settings: ReportSettings,
               cache: Path, overwrite: bool = False, quiet: bool = False) -> dict[str, Any]:
    from optimizer.core.artifact import check_output_dir
    from optimizer.report import annotate, write_report

    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise InputError("two variants have the same name: " + ", ".join(sorted({n for n in names if names.count(n) > 1})),
                         hint="give each recipe its own `name`")
    if baseline not in names:
        raise InputError(f"baseline {baseline!r} is not among the variants ({', '.join(names)})",
                         hint="add it to --variants, or pick --baseline from them")
    limit = parse_limit(settings.max_ppl_increase) if settings.max_ppl_increase else None
    check_output_dir(out, overwrite)
    variants = sorted(variants, key=lambda v: v.name != baseline)  # the baseline first: it sets the gate
    rows: list[dict[str, Any]] = []
    baseline_ppl, first = None, None
    for i, recipe in enumerate(variants, 1):
        with step(f"[{i}/{len(variants)}] {recipe.name}: engine", quiet):
            engine_dir, reused, build_s, manifest = engine_for(source, recipe, cache, settings, baseline_ppl,
                                                               quiet)
        with step(f"[{i}/{len(variants)}] {recipe.name}: perplexity through the engine ({settings.eval_spec})", quiet):
            accuracy = measure_accuracy(engine_dir, settings)
        if recipe.name == baseline:
            baseline_ppl, first = accuracy["perplexity"], (manifest, accuracy)
        with step(f"[{i}/{len(variants)}] {recipe.name}: speed through the runtime", quiet):
            speed = measure_speed(engine_dir, settings)
        rows.append(variant_row(recipe, engine_dir, reused, build_s, manifest, accuracy, speed, limit, baseline_ppl,
                                recipe.name == baseline))
        if not quiet:
            console().print(f"  ppl {accuracy['perplexity']:.3f}, decode {speed['decode_tok_s']:.1f} tok/s"
                            + (f", serving {speed['serving']['output_tok_s']:.1f} tok/s" if speed["serving"] else ""))
    doc = annotate(report_document(source, *first, rows, baseline, settings, limit))
    paths = write_report(doc, out)
    failed = [r for r in rows if r["gate"] and not r["gate"]["passed"]]
    if failed:
        raise GateFailed("; ".join(failure_message(r["name"], r["gate"]) for r in failed),
                         hint=f"the report is written ({paths['html']}); failing engines are marked in their manifests")
    return {"document": doc, "paths": paths}


def engine_for(source: str, recipe: Recipe, cache: Path, settings: ReportSettings, baseline_ppl: float | None,
               quiet: bool) -> tuple[Path, bool, float | None, dict[str, Any]]:
    """The variant's engine from the cache when one with the same identity is there, else
    built into it. Non-baseline variants are built with the gate (measured through the engine
    on the report's own windows, against the baseline's perplexity)."""
    from optimizer.core.artifact import load_engine
    from optimizer.identity import build_identity
    from optimizer.models.loader import load_model
    from optimizer.options import section_values
    from optimizer.pipeline import BuildOptions, build_engine

    loaded = load_model(source, quiet=True)  # fresh: quantization changes the weights in place
    b = recipe.build
    gate = settings.max_ppl_increase if baseline_ppl is not None else None
    opts = BuildOptions(**{**section_values(b), "kv_slots": b.kv_slots or settings.max_batch},
                        out=cache / "pending", source=source, quant=quant_config_from(recipe.quantization),
                        recipe=recipe.to_dict(), architecture=recipe.architecture, max_ppl_increase=gate,
                        gate_eval=settings.eval_spec, gate_baseline=baseline_ppl, quiet=True)
    key = build_identity(opts, loaded.source)["key"]
    out = cache / f"{recipe.name}-{key[:16]}"
    if (out / "manifest.json").is_file():
        try:
            engine = load_engine(out, verify=True)
            if engine.manifest.get("identity", {}).get("key") == key:
                return out, True, None, engine.manifest
        except OptimizerError:
            pass  # damaged: rebuild it
    start = time.perf_counter()
    try:
        engine = build_engine(dataclasses.replace(opts, out=out, overwrite=True), loaded=loaded)
        manifest = engine.manifest
    except GateFailed:  # written and marked as failing; the report shows it
        manifest = load_engine(out, verify=False).manifest
    return out, False, round(time.perf_counter() - start, 1), manifest


def measure_accuracy(engine_dir: Path, settings: ReportSettings) -> dict[str, Any]:
    from calibration.data import TextSpec
    from optimizer.evaluate import evaluate

    spec = TextSpec(settings.dataset, settings.windows, settings.seq_len)
    return evaluate(engine_dir, spec, provider=settings.provider, threads=settings.threads, quiet=True)


def measure_speed(engine_dir: Path, settings: ReportSettings) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "optimizer.report.speed", str(engine_dir), "--provider", settings.provider,
           "--prompt-tokens", str(settings.prefill_tokens), "--decode-tokens", str(settings.decode_tokens),
           "--runs", str(settings.speed_runs), "--max-batch", str(settings.max_batch)]
    if settings.threads:
        cmd += ["--threads", str(settings.threads)]
    s = settings.serving
    if s:
        cmd += ["--requests", str(s["requests"]), "--prompt-range", ",".join(map(str, s["prompt_tokens"])),
                "--output-range", ",".join(map(str, s["output_tokens"])), "--seed", str(s["seed"])]
    else:
        cmd += ["--requests", "0"]
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise OptimizerError(f"the speed run on {engine_dir} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def variant_row(recipe: Recipe, engine_dir: Path, reused: bool, build_s: float | None, manifest: dict[str, Any],
                accuracy: dict[str, Any], speed: dict[str, Any], limit: Any, baseline_ppl: float | None,
                is_baseline: bool) -> dict[str, Any]:
    from optimizer.gate import check

    q = manifest["quantization"]
    ppl = accuracy["perplexity"]
    gate = None
    if limit is not None and not is_baseline:
        gate = check(limit, ppl, baseline_ppl)
    return {
        "name": recipe.name, "engine_dir": str(engine_dir), "engine_key": manifest["identity"]["key"],
        "reused": reused,
        "quantization": {"method": q.get("method", "none"), "bits": q.get("bits"), "group_size": q.get("group_size"),
                         **{k: q[k] for k in ("symmetric", "act_order", "observer", "format") if k in q}},
        "build_seconds": build_s,
        "size_bytes": sum(f["size"] for f in manifest["files"].values()),
        "accuracy": {"perplexity": ppl, "tokens": accuracy["tokens_evaluated"],
                     "delta_vs_baseline": None if is_baseline or baseline_ppl is None else ppl / baseline_ppl - 1},
        "speed": speed,
        "gate": gate,
        "pareto": False,
    }


def report_document(source: str, manifest: dict[str, Any], accuracy: dict[str, Any], rows: list[dict[str, Any]],
                    baseline: str, settings: ReportSettings, limit: Any) -> dict[str, Any]:
    """The report (optimizer.report.schema); `manifest` and `accuracy` are the baseline's."""
    return {
        "schema_version": 1,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": source, "architecture": manifest["architecture"]["name"],
                  "parameters": parameter_count(manifest["architecture"]["config"])},
        "environment": environment(settings),
        "settings": {"dataset": settings.dataset, "windows": accuracy["windows"], "seq_len": accuracy["seq_len"],
                     "windows_sha256": accuracy["windows_sha256"], "prefill_tokens": settings.prefill_tokens,
                     "decode_tokens": settings.decode_tokens,
                     "serving": {**settings.serving, "max_batch": settings.max_batch} if settings.serving else None,
                     "max_ppl_increase": limit.to_dict() if limit else None},
        "baseline": baseline,
        "variants": rows,
        "recommendation": {"variant": None, "reason": ""},
    }


def parameter_count(config: dict[str, Any]) -> int | None:
    """Decoder parameters from the config (embeddings counted once when tied)."""
    try:
        h, inter, layers, vocab = (config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                       "vocab_size"))
        heads, kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
        hd = config.get("head_dim") or h // heads
    except KeyError:
        return None
    attn = h * hd * (heads + 2 * kv) + heads * hd * h
    per_layer = attn + 3 * h * inter + 2 * h
    head = 0 if config.get("tie_word_embeddings") else vocab * h
    return layers * per_layer + vocab * h + head + h


def environment(settings: ReportSettings) -> dict[str, Any]:
    from optimizer.manifest import tool_versions

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = None
    if settings.provider == "cuda":
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda (device name unknown)"
    return {"platform": platform.platform(), "cpu": cpu, "cpu_cores": os.cpu_count() or 1, "gpu": gpu,
            "provider": settings.provider, "threads": settings.threads, "versions": tool_versions()}
