"""Write a report document as report.json, report.md, report.html, the schema and the charts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from optimizer.report.render_html import render_html
from optimizer.report.render_md import CHART_FILES, render_markdown
from optimizer.report.schema import REPORT_SCHEMA, validate_report, write_schema


def _write(path: Path, text: str) -> Path:
    """Write through a temporary file, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _ordered(value: Any, schema: Mapping[str, Any]) -> Any:
    """`value` with object keys in the schema's order (unknown keys after, sorted), so that
    report.json reads top-down and is byte-stable whatever order the document was built in."""
    schema = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        keys = [k for k in props if k in value] + sorted(k for k in value if k not in props)
        return {k: _ordered(value[k], props.get(k, {})) for k in keys}
    if isinstance(value, list):
        return [_ordered(v, schema.get("items", {})) for v in value]
    return value


def write_report(doc: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Validate `doc` (raising `ReportError` before writing anything when it is invalid), then
    write into `out_dir`: report.json (pretty; keys in the schema's order), report.md, report.html
    (self-contained), report.schema.json and the charts pareto.png, size_accuracy.png,
    latency.png. Returns {"json", "md", "html", "schema", "pareto", "size_accuracy",
    "latency"} -> path."""
    validate_report(doc)
    from optimizer.report.charts import CHARTS, to_png, to_svg  # matplotlib: only when drawing

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": _write(out / "report.json",
                            json.dumps(_ordered(doc, REPORT_SCHEMA), indent=2, ensure_ascii=False) + "\n"),
             "schema": write_schema(out)}
    svgs = {}
    for name, make in CHARTS.items():
        fig = make(doc)
        svgs[name] = to_svg(fig)
        paths[name] = out / CHART_FILES[name]
        to_png(fig, paths[name])
    paths["md"] = _write(out / "report.md", render_markdown(doc))
    paths["html"] = _write(out / "report.html", render_html(doc, svgs))
    return paths
