"""Run named passes in order over an onnx_ir model, recording what each changed."""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import onnx_ir as ir

from optimizer.errors import InputError
from passes import REGISTRY, PassContext


def op_counts(model: ir.Model) -> Counter:
    return Counter(f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in model.graph)


def validate_pass_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise InputError(f"unknown pass {unknown[0]!r}", hint="passes: " + ", ".join(REGISTRY))


def run_passes(model: ir.Model, names: Sequence[str],
               ctx: PassContext | None = None) -> tuple[ir.Model, list[dict[str, Any]]]:
    """Apply the passes; return the model and one report per pass."""
    validate_pass_names(names)
    reports = []
    for name in names:
        before, opsets_before = op_counts(model), set(model.opset_imports)
        result = REGISTRY[name].build(ctx or PassContext())(model)
        model = result.model
        after, opsets_after = op_counts(model), set(model.opset_imports)
        delta = {op: after[op] - before[op] for op in sorted(before | after) if after[op] != before[op]}
        summary = f"{sum(before.values())} -> {sum(after.values())} nodes"
        if delta:
            summary += " (" + ", ".join(f"{op} {d:+d}" for op, d in delta.items()) + ")"
        if opsets_before != opsets_after:
            summary += "; opset imports removed: " + ", ".join(sorted(opsets_before - opsets_after))
        reports.append({
            "name": name,
            "changed": bool(result.modified),
            "summary": summary if result.modified else "nothing to rewrite",
            "nodes_before": sum(before.values()),
            "nodes_after": sum(after.values()),
            "op_delta": delta,
        })
    return model, reports
