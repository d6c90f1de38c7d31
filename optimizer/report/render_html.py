"""report.html: one self-contained page (inline CSS, charts as inline SVG, no network).

The verdict comes first, in a highlighted box; then the table (Pareto-front rows marked, gate
failures in red), the charts, and the settings and environment at the bottom.
"""

from __future__ import annotations

from html import escape
from typing import Any, Mapping

from optimizer.report.pareto import delta
from optimizer.report.table import HEADERS, MB, environment_items, rows, settings_items

CHART_TITLES = {"pareto": "Perplexity vs decode speed",
                "size_accuracy": "Engine size vs perplexity",
                "latency": "Serving latency percentiles"}

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
 margin:0;background:#f6f8fa}
main{max-width:1280px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 12px}
.sub{color:#57606a;margin:0 0 20px}
.verdict{border:2px solid #1a7f37;background:#dafbe1;border-radius:10px;padding:18px 22px}
.verdict.none{border-color:#cf222e;background:#ffebe9}
.verdict .label{text-transform:uppercase;letter-spacing:.08em;font-size:12px;color:#1a7f37;
 font-weight:700}
.verdict.none .label{color:#cf222e}
.verdict .name{font-size:30px;font-weight:700;margin:2px 0 6px;font-family:ui-monospace,monospace}
.verdict .reason{margin:0;font-size:16px}
.stats{display:flex;gap:12px;margin-top:14px;flex-wrap:wrap}
.stat{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:8px 14px}
.stat b{display:block;font-size:20px}.stat span{color:#57606a;font-size:13px}
.scroll{overflow-x:auto;background:#fff;border:1px solid #d0d7de;border-radius:8px}
table{border-collapse:collapse;width:100%;font-size:13.5px;white-space:nowrap}
th,td{padding:6px 8px;border-bottom:1px solid #eaeef2;text-align:right}
th{background:#f6f8fa;font-weight:600;white-space:normal;vertical-align:bottom;min-width:3em}
th:nth-child(-n+3),td:nth-child(-n+3){text-align:left}
td:nth-last-child(-n+2),th:nth-last-child(-n+2){text-align:center}
tr.pareto td:first-child{box-shadow:inset 4px 0 #1f6feb}
tr.recommended{background:#dafbe1;font-weight:600}
tr.fail td{color:#cf222e}tr.fail td.gate{font-weight:700}
.tag{font-size:11px;border-radius:10px;padding:1px 7px;margin-left:6px;font-weight:600}
.tag.base{background:#fff8c5;color:#7d4e00}.tag.ship{background:#1a7f37;color:#fff}
.legend{color:#57606a;font-size:13px;margin:8px 0 0}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px}
figure.chart{margin:0;background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px}
figure.chart.wide{grid-column:1/-1}
figure.chart svg{display:block;width:100%;height:auto}
figcaption{font-weight:600;margin-bottom:6px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;background:#fff;
 border:1px solid #d0d7de;border-radius:8px;padding:12px 16px;font-size:14px}
dt{color:#57606a}dd{margin:0;word-break:break-word}
"""


def _stats(doc: Mapping[str, Any]) -> str:
    """Tiles comparing the recommended variant with the baseline."""
    by_name = {v["name"]: v for v in doc["variants"]}
    rec, base = by_name.get(doc["recommendation"]["variant"]), by_name[doc["baseline"]]
    if rec is None or rec is base:
        return ""
    tiles = []
    r_tok, b_tok = rec["speed"]["decode_tok_s"], base["speed"]["decode_tok_s"]
    if r_tok is not None and b_tok:
        tiles.append((f"{r_tok / b_tok:.1f}×", f"decode speed ({r_tok:.1f} tok/s)"))
    dppl = delta(doc, rec)
    tiles.append((f"{dppl * 100:+.1f}%", f"perplexity ({rec['accuracy']['perplexity']:.3f})"))
    tiles.append((f"{rec['size_bytes'] / max(base['size_bytes'], 1):.2f}×",
                  f"engine size ({rec['size_bytes'] / MB:,.0f} MB)"))
    body = "".join(f'<div class="stat"><b>{escape(a)}</b><span>{escape(b)} vs '
                   f'{escape(base["name"])}</span></div>' for a, b in tiles)
    return f'<div class="stats">{body}</div>'


def _verdict(doc: Mapping[str, Any]) -> str:
    rec = doc["recommendation"]
    if rec["variant"] is None:
        return (f'<section class="verdict none" id="recommendation"><div class="label">'
                f'No variant to ship</div><p class="reason">{escape(rec["reason"])}</p></section>')
    return (f'<section class="verdict" id="recommendation"><div class="label">Recommended: '
            f'ship</div><div class="name">{escape(rec["variant"])}</div>'
            f'<p class="reason">{escape(rec["reason"])}</p>{_stats(doc)}</section>')


def _table(doc: Mapping[str, Any]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in HEADERS)
    body = []
    for row in rows(doc):
        classes = " ".join(c for c, on in (("pareto", row.pareto), ("fail", row.gate_failed),
                                           ("recommended", row.recommended)) if on)
        cells = [escape(c) for c in row.cells]
        if row.baseline:
            cells[0] += '<span class="tag base">baseline</span>'
        if row.recommended:
            cells[0] += '<span class="tag ship">ship</span>'
        tds = "".join(f'<td class="gate">{c}</td>' if i == len(cells) - 2 else f"<td>{c}</td>"
                      for i, c in enumerate(cells))
        body.append(f'<tr class="{classes}" data-variant="{escape(row.name)}">{tds}</tr>')
    return (f'<div class="scroll"><table id="variants"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>'
            '<p class="legend">Blue bar and ✓: on the Pareto front (no other variant has both '
            'lower-or-equal perplexity and higher-or-equal decode speed). Red: fails the '
            'perplexity gate. MB = 10<sup>6</sup> bytes.</p>')


def _dl(items: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items) + "</dl>"


def render_html(doc: Mapping[str, Any], svgs: Mapping[str, str]) -> str:
    """The page; `svgs` maps chart names (pareto, size_accuracy, latency) to inline <svg>."""
    charts = "".join(
        f'<figure class="chart{" wide" if name == "latency" else ""}" id="chart-{name}">'
        f'<figcaption>{escape(CHART_TITLES.get(name, name))}</figcaption>{svg}</figure>'
        for name, svg in svgs.items())
    model = doc["model"]
    title = f"Optimization report: {model['source']}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{CSS}</style></head>
<body><main>
<h1>{escape(title)}</h1>
<p class="sub">{escape(model['architecture'])} · {len(doc['variants'])} variants ·
baseline {escape(doc['baseline'])} · {escape(doc['created_at'])}</p>
{_verdict(doc)}
<h2>Variants</h2>
{_table(doc)}
<h2>Charts</h2>
<div class="charts">{charts}</div>
<h2>Settings</h2>
{_dl(settings_items(doc))}
<h2>Environment</h2>
{_dl(environment_items(doc))}
</main></body></html>
"""
