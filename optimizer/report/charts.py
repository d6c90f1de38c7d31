"""The report's charts as matplotlib figures (Agg, no pyplot state).

Each function takes the report document and returns a `Figure`. Variants missing a figure a
chart needs are left out of it, and a note in the chart area names them.
"""

from __future__ import annotations

import io
from typing import Any, Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from optimizer.report.pareto import pareto_front, ppl_limit, variant_points

FRONT, OTHER, BASE, LIMIT, SHIP = "#1f6feb", "#8c959f", "#d4a72c", "#cf222e", "#1a7f37"
MB = 1e6
# Label spots tried around a point, nearest first: (dx, dy) in points, 8 directions per ring.
_DIRECTIONS = [(1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1.3), (0, -1.3), (1.2, 0), (-1.2, 0)]
_SPOTS = [(r * dx, r * dy) for r in (7, 18, 30, 44) for dx, dy in _DIRECTIONS]


def _empty(ax, text: str) -> None:
    """An axes with nothing to plot: say so in its middle."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10,
            color="#57606a", wrap=True)
    ax.set_xticks([]), ax.set_yticks([])


def _note(fig: Figure, text: str) -> None:
    """A note under the plot, in a strip kept free of axes so it never covers data."""
    fig.get_layout_engine().set(rect=(0, 0.07, 1, 0.93))
    fig.text(0.99, 0.015, text, ha="right", va="bottom", fontsize=8.5, color="#57606a",
             style="italic", wrap=True)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _overlap(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _label_points(fig: Figure, ax, points: list[tuple[float, float, str]]) -> None:
    """Label each (x, y, text) point at the nearest spot around it where the label covers no
    other label or point and stays inside the axes; else at the least-covering spot. Labels
    away from their point get a thin leader line."""
    fig.canvas.draw()  # settle the layout first: labels are placed in display coordinates
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    to_px = ax.transData.transform
    taken = [Bbox.from_bounds(*(to_px((x, y)) - 9), 18, 18) for x, y, _ in points]  # markers

    def label(x, y, text, dx, dy):
        ha = "left" if dx > 1 else "right" if dx < -1 else "center"
        va = "bottom" if dy > 1 else "top" if dy < -1 else "center"
        lead = {"arrowstyle": "-", "color": "#8c959f", "lw": 0.6, "shrinkA": 1, "shrinkB": 4}
        ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha,
                          va=va, fontsize=8.5, in_layout=False,
                          arrowprops=lead if abs(dx) + abs(dy) > 20 else None)
        # the text's own box: an Annotation's extent would include its leader line
        ann.update_positions(renderer)
        return ann, Text.get_window_extent(ann, renderer).expanded(1.1, 1.3)

    for i, (x, y, text) in enumerate(points):
        best = None
        for dx, dy in _SPOTS:
            ann, box = label(x, y, text, dx, dy)
            cover = sum(_overlap(box, b) for j, b in enumerate(taken) if j != i)
            cover += box.width * box.height - _overlap(box, inside)  # outside the axes
            if best is None or cover < best[0]:
                best = (cover, dx, dy)
            ann.remove()
            if cover == 0:
                break
        ann, box = label(x, y, text, best[1], best[2])
        taken.append(box)


def _pad_limits(ax, xs: list[float], ys: list[float], frac: float = 0.12) -> None:
    for values, setter in ((xs, ax.set_xlim), (ys, ax.set_ylim)):
        lo, hi = min(values), max(values)
        span = (hi - lo) or abs(hi) * 0.1 or 1.0
        setter(lo - span * frac, hi + span * frac)


def pareto_chart(doc: Mapping[str, Any]) -> Figure:
    """Perplexity (y) vs decode tokens/s (x); the front highlighted and joined by a step line."""
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    points = variant_points(doc)
    shown = {n: p for n, p in points.items() if None not in p}
    missing = sorted(set(points) - set(shown))
    ax.set_title("Perplexity vs decode speed (lower right is better)", fontsize=11)
    ax.set_xlabel("decode tokens/s (higher is better)")
    ax.set_ylabel("perplexity (lower is better)")
    if missing and shown:
        _note(fig, "not shown (no decode speed): " + ", ".join(missing))
    if not shown:
        _empty(ax, "no variant has a decode speed: nothing to plot")
        return fig
    front = pareto_front(shown)
    ys = [p[0] for p in shown.values()]
    limit = ppl_limit(doc)
    if limit is not None:
        rule = doc["settings"]["max_ppl_increase"]
        ax.axhline(limit, color=LIMIT, ls="--", lw=1.2, label=f"limit (+{rule['text']})")
        ys.append(limit)
    _pad_limits(ax, [p[1] for p in shown.values()], ys)
    steps = sorted((shown[n][1], shown[n][0]) for n in front)
    if len(steps) > 1:
        ax.step([s[0] for s in steps], [s[1] for s in steps], where="pre", color=FRONT,
                lw=1.5, alpha=0.7, zorder=2)
    others = [n for n in shown if n not in front]
    if others:
        ax.scatter([shown[n][1] for n in others], [shown[n][0] for n in others], s=40, c=OTHER,
                   zorder=3, label="dominated")
    ax.scatter([shown[n][1] for n in front], [shown[n][0] for n in front], s=70, c=FRONT,
               edgecolors="white", zorder=4, label="Pareto front")
    base = doc["baseline"]
    if base in shown:
        ax.scatter([shown[base][1]], [shown[base][0]], s=220, facecolors="none",
                   edgecolors=BASE, linewidths=2, zorder=5, label="baseline")
    ship = doc.get("recommendation", {}).get("variant")
    if ship in shown:
        ax.scatter([shown[ship][1]], [shown[ship][0]], s=260, marker="*", c=SHIP,
                   edgecolors="white", zorder=6, label=f"ship: {ship}")
    ax.grid(alpha=0.3)
    _label_points(fig, ax, [(p[1], p[0], n) for n, p in sorted(shown.items(), key=lambda i: i[1])])
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    return fig


def size_accuracy_chart(doc: Mapping[str, Any]) -> Figure:
    """Engine size (MB, x) vs perplexity (y), every variant labelled."""
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    ax.set_title("Engine size vs perplexity (lower left is better)", fontsize=11)
    ax.set_xlabel("engine size (MB)")
    ax.set_ylabel("perplexity")
    rows = [(v["size_bytes"] / MB, v["accuracy"]["perplexity"], v["name"], v.get("pareto"))
            for v in doc["variants"]]
    _pad_limits(ax, [r[0] for r in rows], [r[1] for r in rows])
    ax.scatter([r[0] for r in rows], [r[1] for r in rows], s=60,
               c=[FRONT if r[3] else OTHER for r in rows], edgecolors="white", zorder=3)
    ship = [r for r in rows if r[2] == doc.get("recommendation", {}).get("variant")]
    if ship:
        ax.scatter([ship[0][0]], [ship[0][1]], s=260, marker="*", c=SHIP, edgecolors="white",
                   zorder=4, label=f"ship: {ship[0][2]}")
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    ax.grid(alpha=0.3)
    _label_points(fig, ax, [(r[0], r[1], r[2]) for r in sorted(rows)])
    return fig


def latency_chart(doc: Mapping[str, Any]) -> Figure:
    """Grouped bars of TTFT and TPOT p50/p95/p99 per variant (two subplots)."""
    fig = _figure(11, 3.8)
    axes = fig.subplots(1, 2)
    served = [v for v in doc["variants"] if v["speed"].get("serving")]
    missing = [v["name"] for v in doc["variants"] if not v["speed"].get("serving")]
    panels = (("ttft_s", 1000.0, "time to first token (ms)"),
              ("tpot_ms", 1.0, "time per output token (ms)"))
    for ax, (key, scale, title) in zip(axes, panels):
        ax.set_title(title, fontsize=11)
        if not served:
            _empty(ax, "no serving measurements")
            continue
        width = 0.8 / 3
        for i, (pct, alpha) in enumerate((("p50", 1.0), ("p95", 0.65), ("p99", 0.35))):
            xs = [j + (i - 1) * width for j in range(len(served))]
            ax.bar(xs, [v["speed"]["serving"][key][pct] * scale for v in served], width,
                   label=pct, color=FRONT, alpha=alpha, edgecolor="white")
        ax.set_xticks(range(len(served)), [v["name"] for v in served],
                      rotation=30 if len(served) > 3 else 0, ha="right" if len(served) > 3 else "center",
                      fontsize=8.5)
        ax.set_ylabel("ms")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.15)  # headroom for the legend
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, ncol=3, loc="upper center")
    if missing and served:
        _note(fig, "not shown (no serving run): " + ", ".join(missing))
    return fig


CHARTS = {"pareto": pareto_chart, "size_accuracy": size_accuracy_chart, "latency": latency_chart}


def to_svg(fig: Figure) -> str:
    """The figure as an inline `<svg>` element (XML prolog and DOCTYPE dropped)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def to_png(fig: Figure, path) -> None:
    fig.savefig(path, format="png", dpi=150)
