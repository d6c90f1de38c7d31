"""The accuracy gate: an engine's perplexity (through the engine) against a baseline's.

    limit = parse_limit("3%")      # relative: ppl <= baseline * 1.03
    limit = parse_limit("0.5")     # absolute: ppl <= baseline + 0.5
    result = check(limit, perplexity=14.9, baseline=14.6)   # {"passed": True, ...}

`optimize model --max-ppl-increase` and `optimize report --max-ppl-increase` use it; an
engine that fails keeps its files, its manifest says so, and `optimize serve` refuses it
unless told otherwise (`--allow-failed-gate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optimizer.core.errors import InputError, OptimizerError

DEFAULT_GATE_EVAL = "wiki:20x512"  # text the gate measures perplexity on (SOURCE:NxL)


class GateFailed(OptimizerError):
    exit_code = 6


@dataclass(frozen=True)
class Limit:
    kind: str  # "relative" | "absolute"
    value: float  # fraction (0.03) or perplexity points (0.5)
    text: str

    def allowed(self, baseline: float) -> float:
        return baseline * (1 + self.value) if self.kind == "relative" else baseline + self.value

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "text": self.text}


def parse_limit(text: str) -> Limit:
    raw = str(text).strip()
    try:
        if raw.endswith("%"):
            limit = Limit("relative", float(raw[:-1]) / 100, raw)
        else:
            limit = Limit("absolute", float(raw), raw)
    except ValueError:
        raise InputError(f"--max-ppl-increase {text!r} is not a number",
                         hint="give a relative limit such as 3% or an absolute one such as 0.5") from None
    if not limit.value >= 0:
        raise InputError(f"--max-ppl-increase must not be negative, got {text!r}")
    return limit


def check(limit: Limit, perplexity: float, baseline: float) -> dict[str, Any]:
    """The gate's record (as stored in manifests and reports)."""
    return {"passed": bool(perplexity <= limit.allowed(baseline)), "limit": limit.text,
            "perplexity": perplexity, "baseline_perplexity": baseline}


def failure_message(name: str, gate: dict[str, Any]) -> str:
    increase = gate["perplexity"] / gate["baseline_perplexity"] - 1
    return (f"{name} fails the accuracy gate: perplexity {gate['perplexity']:.3f} vs baseline "
            f"{gate['baseline_perplexity']:.3f} ({increase:+.2%}), limit {gate['limit']}")
