"""The comparison table shared by the Markdown and HTML reports: headers and formatted cells."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from optimizer.report.pareto import delta

MB = 1e6  # the reports' "MB" is 10^6 bytes
DASH = "—"

HEADERS = ["variant", "method", "bits", "ppl", "Δppl vs baseline", "prefill tok/s",
           "decode tok/s", "serving tok/s", "TTFT p50/p95 (ms)", "TPOT p50/p95 (ms)",
           "peak memory MB", "engine size MB", "gate", "Pareto"]


@dataclass
class Row:
    name: str
    cells: list[str]
    baseline: bool
    recommended: bool
    pareto: bool
    gate_failed: bool


def num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return DASH
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _pair(p: Mapping[str, float] | None, scale: float) -> str:
    if not p:
        return DASH
    digits = 0 if p["p50"] * scale >= 100 else 1
    return f"{num(p['p50'] * scale, digits)} / {num(p['p95'] * scale, digits)}"


def _gate(g: Mapping[str, Any] | None) -> str:
    if g is None:
        return DASH
    return "pass" if g["passed"] else f"FAIL (limit {g['limit']})"


def rows(doc: Mapping[str, Any]) -> list[Row]:
    out = []
    rec = doc.get("recommendation", {}).get("variant")
    for v in doc["variants"]:
        q, acc, sp = v["quantization"], v["accuracy"], v["speed"]
        serving = sp.get("serving")
        base = v["name"] == doc["baseline"]
        rss = sp.get("peak_rss_bytes")
        cells = [
            v["name"], q["method"], DASH if q.get("bits") is None else str(q["bits"]),
            f"{acc['perplexity']:.3f}", "baseline" if base else f"{delta(doc, v) * 100:+.1f}%",
            num(sp.get("prefill_tok_s")), num(sp.get("decode_tok_s")),
            num(serving["output_tok_s"]) if serving else DASH,
            _pair(serving and serving["ttft_s"], 1000.0), _pair(serving and serving["tpot_ms"], 1.0),
            num(None if rss is None else rss / MB, 0), num(v["size_bytes"] / MB, 0),
            _gate(v.get("gate")), "✓" if v.get("pareto") else "",
        ]
        out.append(Row(v["name"], cells, base, v["name"] == rec, bool(v.get("pareto")),
                       bool(v.get("gate")) and not v["gate"]["passed"]))
    return out


def environment_items(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    env = doc["environment"]
    items = [("platform", env["platform"]), ("CPU", f"{env['cpu']} ({env['cpu_cores']} cores)"),
             ("GPU", env.get("gpu") or DASH), ("provider", env["provider"]),
             ("threads", DASH if env.get("threads") is None else str(env["threads"]))]
    versions = ", ".join(f"{k} {v}" for k, v in sorted(env.get("versions", {}).items()))
    return items + [("versions", versions or DASH)]


def settings_items(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    s, m = doc["settings"], doc["model"]
    sv = s["serving"]
    rule = s.get("max_ppl_increase")
    params = DASH if m.get("parameters") is None else f"{m['parameters']:,}"
    return [
        ("model", f"{m['source']} ({m['architecture']}, {params} parameters)"),
        ("perplexity", f"{s['dataset']}, {s['windows']} windows x {s['seq_len']} tokens "
                       f"(windows sha256 {s['windows_sha256'][:12]}…)"),
        ("speed", f"prefill {s['prefill_tokens']} tokens, decode {s['decode_tokens']} tokens"),
        ("serving", f"{sv['requests']} requests, prompts {sv['prompt_tokens'][0]}–"
                    f"{sv['prompt_tokens'][1]} tokens, outputs {sv['output_tokens'][0]}–"
                    f"{sv['output_tokens'][1]} tokens, seed {sv['seed']}, max batch {sv['max_batch']}"),
        ("perplexity limit", f"+{rule['text']} vs the baseline ({rule['kind']})" if rule else "none"),
        ("baseline", doc["baseline"]),
        ("created", doc["created_at"]),
    ]
