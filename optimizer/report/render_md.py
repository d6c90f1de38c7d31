"""report.md: the recommendation, the comparison table, the charts, settings and environment."""

from __future__ import annotations

from typing import Any, Mapping

from optimizer.report.table import HEADERS, environment_items, rows, settings_items

CHART_FILES = {"pareto": "pareto.png", "size_accuracy": "size_accuracy.png",
               "latency": "latency.png"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(doc: Mapping[str, Any]) -> str:
    rec = doc["recommendation"]
    model = doc["model"]
    ship = f"**Ship `{rec['variant']}`**" if rec["variant"] else "**No variant to ship**"
    lines = [f"# Optimization report: {model['source']}", "",
             f"{ship}: {rec['reason']}", "",
             "| " + " | ".join(HEADERS) + " |",
             "|" + "|".join("---" if i < 3 else "---:" for i in range(len(HEADERS) - 2))
             + "|:---:|:---:|"]
    for row in rows(doc):
        cells = [_cell(c) for c in row.cells]
        if row.baseline:
            cells[0] += " (baseline)"
        if row.recommended:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Pareto ✓: no other variant has both lower-or-equal perplexity and "
              "higher-or-equal decode speed. MB = 10^6 bytes.", "", "## Charts", ""]
    lines += [f"![{name}]({file})" for name, file in CHART_FILES.items()]
    lines += ["", "## Settings", ""] + [f"- {k}: {v}" for k, v in settings_items(doc)]
    lines += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in environment_items(doc)]
    return "\n".join(lines) + "\n"
