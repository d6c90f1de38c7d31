"""The perplexity / decode-speed Pareto front, and the variant to ship (pure functions).

A variant is on the front when no other variant is at least as good on both axes (perplexity
lower or equal, decode tokens/s higher or equal) and strictly better on one. Variants without
a decode speed cannot be compared and are never on the front; identical points are both on it.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

Point = tuple[float | None, float | None]  # (perplexity, decode tokens/s)


def _as_points(points: Mapping[str, Point] | Iterable[tuple[str, float | None, float | None]]
               ) -> dict[str, Point]:
    if isinstance(points, Mapping):
        return {name: (p[0], p[1]) for name, p in points.items()}
    return {name: (ppl, tok_s) for name, ppl, tok_s in points}


def pareto_front(points: Mapping[str, Point] | Iterable[tuple[str, float | None, float | None]]
                 ) -> set[str]:
    """Names on the front of `points`: {name: (perplexity, decode_tok_s)} or
    [(name, perplexity, decode_tok_s)], minimizing perplexity and maximizing speed."""
    known = {n: p for n, p in _as_points(points).items() if None not in p}

    def dominated(a: Point) -> bool:
        return any(b[0] <= a[0] and b[1] >= a[1] and (b[0] < a[0] or b[1] > a[1])
                   for b in known.values())

    return {name for name, p in known.items() if not dominated(p)}


def variant_points(doc: Mapping[str, Any]) -> dict[str, Point]:
    return {v["name"]: (v["accuracy"]["perplexity"], v["speed"]["decode_tok_s"])
            for v in doc["variants"]}


def ppl_limit(doc: Mapping[str, Any]) -> float | None:
    """The highest perplexity the settings allow, or None when no limit is set."""
    rule = doc["settings"].get("max_ppl_increase")
    if not rule:
        return None
    base = _by_name(doc)[doc["baseline"]]["accuracy"]["perplexity"]
    if rule["kind"] == "relative":
        return base * (1 + rule["value"])
    return base + rule["value"]


def delta(doc: Mapping[str, Any], variant: Mapping[str, Any]) -> float:
    """The variant's relative perplexity change vs the baseline (0.021 = +2.1%)."""
    if variant["accuracy"].get("delta_vs_baseline") is not None:
        return variant["accuracy"]["delta_vs_baseline"]
    base = _by_name(doc)[doc["baseline"]]["accuracy"]["perplexity"]
    return variant["accuracy"]["perplexity"] / base - 1


def eligible(doc: Mapping[str, Any], variant: Mapping[str, Any]) -> bool:
    """Within the perplexity limit: the variant's gate when it has one, else the settings'
    limit; every variant is eligible when no limit is set."""
    if variant["name"] == doc["baseline"]:
        return True
    if variant.get("gate") is not None:
        return bool(variant["gate"]["passed"])
    limit = ppl_limit(doc)
    return limit is None or variant["accuracy"]["perplexity"] <= limit


def _by_name(doc: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {v["name"]: v for v in doc["variants"]}


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def recommend(report: Mapping[str, Any]) -> dict[str, Any]:
    """{"variant": name | None, "reason": one sentence}: the fastest variant on the Pareto front
    among those within the perplexity limit. Without any decode speed, the smallest engine
    within the limit. Ties: lower perplexity, then smaller engine, then name."""
    variants = list(report["variants"])
    base = _by_name(report)[report["baseline"]]
    rule = report["settings"].get("max_ppl_increase")
    within = f" within the {rule['text']} limit" if rule else ""
    notes = [] if rule else ["no perplexity limit was set"]
    ok = [v for v in variants if eligible(report, v)]
    if len(variants) == 1:
        return {"variant": base["name"], "reason": f"{base['name']}: the only variant measured."}
    if not ok:
        return {"variant": None,
                "reason": f"No variant stays{within} of the baseline's perplexity."}

    front = pareto_front(variant_points(report))
    fast = [v for v in ok if v["speed"]["decode_tok_s"] is not None]
    pool = [v for v in fast if v["name"] in front] or fast
    if pool:
        best = min(pool, key=lambda v: (-v["speed"]["decode_tok_s"], v["accuracy"]["perplexity"],
                                        v["size_bytes"], v["name"]))
        what = f"the fastest variant{within}"
    else:
        best = min(ok, key=lambda v: (v["size_bytes"], v["accuracy"]["perplexity"], v["name"]))
        what = f"the smallest engine{within}"
        notes.append("no decode speed was measured")
    what += f" ({'; '.join(notes)})" if notes else ""
    if best is base:
        return {"variant": best["name"], "reason": f"{best['name']}: the baseline itself is {what}."}
    best_tok, base_tok = best["speed"]["decode_tok_s"], base["speed"]["decode_tok_s"]
    if best_tok is not None and base_tok:
        gain = f"{best_tok / base_tok:.1f}x the baseline's decode speed"
    elif best_tok is not None:
        gain = f"{best_tok:.1f} decode tokens/s"
    else:
        gain = f"{best['size_bytes'] / max(base['size_bytes'], 1):.2f}x the baseline's engine size"
    return {"variant": best["name"],
            "reason": f"{best['name']}: {gain} at {_pct(delta(report, best))} perplexity, {what}."}


def annotate(doc: dict[str, Any]) -> dict[str, Any]:
    """Set each variant's `pareto` flag and the document's `recommendation` (in place);
    return the document."""
    front = pareto_front(variant_points(doc))
    for v in doc["variants"]:
        v["pareto"] = v["name"] in front
    doc["recommendation"] = recommend(doc)
    return doc
