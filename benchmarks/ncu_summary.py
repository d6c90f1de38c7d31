"""What an Nsight Compute report of one kernel says, in a few lines of a job's log.

    ncu --import r.ncu-rep --page details --csv > details.csv
    ncu --import r.ncu-rep --page source --csv --print-source sass > sass.csv
    ncu --import r.ncu-rep --page raw --csv > raw.csv
    python benchmarks/ncu_summary.py --details details.csv --sass sass.csv [--raw raw.csv] [--top 30]

From the details page: the metrics of the sections that say where a latency-bound kernel waits
(speed of light, occupancy, scheduler and warp state statistics, memory workload, launch), one
line each. From the source page: the SASS instructions with the most warp stall samples, with
their share of all samples; then the samples of the code before the main loop, of the loop and
after it (the loop as benchmarks/sass_loop_stats.py finds it), each with its most frequent stall
reasons. From the raw page: how busy the pipes were (tensor, shared, ALU, FMA, load/store), shared
memory's wavefronts and L2's sectors, as shares of their peaks. Any file may be left out; a file in
another shape than expected is named with the columns it has, so that the CSV itself can be read
instead.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from sass_loop_stats import loop_bounds

SECTIONS = ("GPU Speed Of Light Throughput", "Compute Workload Analysis", "Occupancy", "Scheduler Statistics",
            "Warp State Statistics", "Memory Workload Analysis", "Launch Statistics")
SAMPLES = "Warp Stall Sampling (All"


def number(text: str | None) -> float:
    try:
        return float((text or "0").replace(",", ""))
    except ValueError:
        return 0.0


def details_lines(rows: list[dict[str, str]]) -> list[str]:
    """'section: metric = value unit' for the sections above, in the report's order."""
    needed = {"Section Name", "Metric Name", "Metric Value"}
    if rows and not needed <= set(rows[0]):
        return [f"details: no {sorted(needed - set(rows[0]))} among {list(rows[0])[:12]}"]
    return [f"{r['Section Name']}: {r['Metric Name']} = {r['Metric Value']} {r.get('Metric Unit', '')}".rstrip()
            for r in rows if r["Section Name"] in SECTIONS]


def stall_lines(rows: list[dict[str, str]], top: int) -> list[str]:
    """The `top` instructions by warp stall samples: samples, share, address, SASS."""
    key = next((k for k in (rows[0] if rows else {}) if k.startswith(SAMPLES)), None)
    if key is None:
        return [f"sass: no '{SAMPLES}...' column among {list(rows[0])[:12] if rows else '(empty)'}"]
    total = sum(number(r[key]) for r in rows) or 1.0
    ranked = sorted(rows, key=lambda r: number(r[key]), reverse=True)[:top]
    return [f"stall samples: {total:.0f}"] + [
        f"{number(r[key]):8.0f} {100 * number(r[key]) / total:5.1f}%  {r.get('Address', '')}  {r.get('Source', '')}"
        for r in ranked]


def region_lines(rows: list[dict[str, str]], reasons: int = 4) -> list[str]:
    """Stall samples before the main loop, in it and after it, each region's `reasons` most frequent
    stall reasons (the source page's stall_* columns). The loop as benchmarks/sass_loop_stats.py
    finds it: the backward branch over the first block barrier."""
    key = next((k for k in (rows[0] if rows else {}) if k.startswith(SAMPLES)), None)
    if key is None or "Address" not in rows[0]:
        return [f"regions: no '{SAMPLES}...' or 'Address' column"]
    at = [int(r["Address"], 16) for r in rows]
    bounds = loop_bounds([(a, r.get("Source", "").strip()) for a, r in zip(at, rows)])
    if bounds is None:
        return ["regions: no loop back over the first block barrier"]
    first = next(i for i, a in enumerate(at) if a >= bounds[0])
    last = max(i for i, a in enumerate(at) if a <= bounds[1])
    total = sum(number(r[key]) for r in rows) or 1.0
    columns = [c for c in rows[0] if c.startswith("stall_") and "Not Issued" not in c]
    out = []
    for name, part in (("before the loop", rows[:first]), ("the loop", rows[first:last + 1]),
                       ("after the loop", rows[last + 1:])):
        samples = sum(number(r[key]) for r in part)
        by_reason = sorted(((sum(number(r[c]) for r in part), c) for c in columns), reverse=True)[:reasons]
        why = ", ".join(f"{c.removeprefix('stall_')} {100 * v / (samples or 1):.0f}%" for v, c in by_reason if v)
        out.append(f"{name}: {len(part)} instructions, {samples:.0f} samples ({100 * samples / total:.0f}%)"
                   + (f": {why}" if why else ""))
    return out


PIPES = ("pipe_tensor", "pipe_shared", "pipe_alu", "pipe_fma", "pipe_lsu")


def pipe_metric(name: str) -> bool:
    """A raw metric pipe_lines prints: a pipe's share of its peak, shared memory's wavefronts', L2's sectors'."""
    return (name.endswith("pct_of_peak_sustained_active") and any(p in name for p in PIPES)
            or "lsu_wavefronts_mem_shared" in name and "pct" in name or name.startswith("lts__t_sectors.avg.pct"))


def pipe_lines(rows: list[dict[str, str]]) -> list[str]:
    """'raw: metric = value' for the pipe_metric ones of the raw page's last row (its units row first)."""
    if not rows:
        return ["raw: no rows"]
    return [f"raw: {name} = {value}" for name, value in rows[-1].items() if pipe_metric(name)]


def read(path: Path) -> list[dict[str, str]]:
    lines = path.read_text(errors="replace").splitlines()
    # after ncu's own messages, and the source page's '"Kernel Name",...' line above its header
    start = next((i for i, line in enumerate(lines)
                  if line.startswith('"') and not line.startswith('"Kernel Name"')), 0)
    return list(csv.DictReader(lines[start:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--details", type=Path)
    ap.add_argument("--sass", type=Path)
    ap.add_argument("--raw", type=Path)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    sass_lines = lambda rows: stall_lines(rows, args.top) + region_lines(rows)  # noqa: E731
    for path, lines in ((args.details, details_lines), (args.sass, sass_lines), (args.raw, pipe_lines)):
        if path is None:
            continue
        if not path.exists():
            print(f"{path}: missing")
            continue
        print(f"== {path}")
        for line in lines(read(path)):
            print(line)


if __name__ == "__main__":
    main()
