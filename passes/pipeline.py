"""Run named passes in order over an onnx_ir model, recording what each changed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import onnx_ir as ir

from optimizer.core.errors import InputError, OptimizerError
from passes import PIPELINES, REGISTRY, PassContext


class PassError(OptimizerError):
    exit_code = 3


def op_counts(model: ir.Model) -> Counter:
    return Counter(f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in model.graph)


def resolve_pass_names(text: str | Sequence[str]) -> tuple[str, ...]:
    """'default' / 'unfused' / 'none', or a comma-separated list of pass names."""
    if isinstance(text, str):
        if text.strip() in PIPELINES:
            return PIPELINES[text.strip()]
        text = [p.strip() for p in text.split(",") if p.strip()]
    names = tuple(text)
    validate_pass_names(names)
    check_order(names)
    return names


def check_order(names: Sequence[str]) -> None:
    """Every pass runs after the passes its registry entry names in `after`, where both run."""
    position = {name: i for i, name in reversed(list(enumerate(names)))}  # first occurrence
    for i, name in enumerate(names):
        late = [a for a in REGISTRY[name].after if position.get(a, -1) > i]
        if late:
            raise InputError(f"pass {name!r} must run after {late[0]!r}, which comes later in the pipeline",
                             hint=f"put {late[0]} before {name} in --passes (`optimize passes` shows the default order)")


def validate_pass_names(names: Sequence[str], what: str = "pass") -> None:
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise InputError(f"unknown {what} {unknown[0]!r}",
                         hint="passes: " + ", ".join(REGISTRY) + "; pipelines: " + ", ".join(PIPELINES))


def run_passes(model: ir.Model, names: Sequence[str], ctx: PassContext | None = None,
               dump_after: Sequence[str] = (), dump_dir: Path | None = None,
               ) -> tuple[ir.Model, list[dict[str, Any]]]:
    """Apply the passes; return the model and one report per pass. With `dump_after`, the
    graph after each named pass (or every pass, for "all") is written as text to `dump_dir`."""
    validate_pass_names(names)
    validate_pass_names([d for d in dump_after if d != "all"], "--dump-ir-after pass")
    reports = []
    for index, name in enumerate(names):
        before, opsets_before = op_counts(model), set(model.opset_imports)
        pass_obj = REGISTRY[name].build(ctx or PassContext())
        try:
            result = pass_obj(model)
        except OptimizerError:
            raise
        except Exception as e:  # a pass bug must not surface as a half-written engine
            raise PassError(f"graph pass {name!r} failed: {type(e).__name__}: {e}",
                            hint="build with --passes unfused to skip the fusions, and report this bug") from e
        model = result.model
        after, opsets_after = op_counts(model), set(model.opset_imports)
        delta = {op: after[op] - before[op] for op in sorted(before | after) if after[op] != before[op]}
        summary = f"{sum(before.values())} -> {sum(after.values())} nodes"
        if delta:
            summary += " (" + ", ".join(f"{op} {d:+d}" for op, d in delta.items()) + ")"
        for verb, opsets in (("added", opsets_after - opsets_before), ("removed", opsets_before - opsets_after)):
            if opsets:
                summary += f"; opset imports {verb}: " + ", ".join(sorted(opsets))
        notes = list(getattr(pass_obj, "notes", []))
        reports.append({
            "name": name,
            "changed": bool(result.modified),
            "summary": summary if result.modified else "nothing to rewrite",
            "notes": notes,
            "nodes_before": sum(before.values()),
            "nodes_after": sum(after.values()),
            "op_delta": delta,
        })
        if dump_dir is not None and ("all" in dump_after or name in dump_after):
            dump_dir.mkdir(parents=True, exist_ok=True)
            (dump_dir / f"{index:02d}-after-{name}.txt").write_text(str(model.graph))
    return model, reports
