"""`optimize eval` wall time, checkouts side by side in one run (issue 23: eval >= 2x faster,
identical perplexity).

Each checkout is a source tree (e.g. a `git worktree` of an older commit) run with this
repository's virtual environment and PYTHONPATH=<checkout>; the runs alternate between the
checkouts (run 1 of each, then run 2 of each, ...) so that a shared machine's load falls on
all of them alike. Every run is a fresh process, timed from start to exit, and prints its
result as JSON (perplexity to the last digit, windows' sha256). One JSON line per run on
stdout, then a summary line per checkout (median wall time, ratio to the first checkout).

    git worktree add /tmp/eval-before 996812c
    flock /tmp/bench.lock python benchmarks/eval_speed.py /tmp/ev/e \\
        --checkout before=/tmp/eval-before --checkout after=. --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_eval(checkout: Path, engine: str, dataset: str, windows: int, seq_len: int, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    cmd = [sys.executable, "-c", "from optimizer.cli import main; main()", "eval", engine, "--dataset", dataset,
           "--windows", str(windows), "--seq-len", str(seq_len), "--json", *extra]
    load_before = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # run outside the repository so that only PYTHONPATH decides which sources are imported
    out = subprocess.run(cmd, env=env, cwd="/", capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds (user + system) of the run: less sensitive than wall time to other work on a shared machine
    cpu_s = (cpu.ru_utime - cpu_before.ru_utime) + (cpu.ru_stime - cpu_before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu_s, 2),
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)], **json.loads(out.stdout)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("engine")
    ap.add_argument("--checkout", action="append", required=True, help="label=path (the first is the baseline)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dataset", default="wiki")
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--extra", default="", help="more `optimize eval` flags, for every checkout")
    args = ap.parse_args()
    checkouts = [(c.split("=", 1)[0], Path(c.split("=", 1)[1])) for c in args.checkout]
    walls: dict[str, list[float]] = {label: [] for label, _ in checkouts}
    cpus: dict[str, list[float]] = {label: [] for label, _ in checkouts}
    ppl: dict[str, set] = {label: set() for label, _ in checkouts}
    for i in range(args.runs):
        for label, path in checkouts:
            result = run_eval(path, args.engine, args.dataset, args.windows, args.seq_len, args.extra.split())
            walls[label].append(result["wall_s"])
            cpus[label].append(result["cpu_s"])
            ppl[label].add(result["perplexity"])
            print(json.dumps({"checkout": label, "path": str(path), "run": i + 1, **result}), flush=True)
    first = checkouts[0][0]
    base, base_cpu = statistics.median(walls[first]), statistics.median(cpus[first])
    for label, _ in checkouts:
        median, median_cpu = statistics.median(walls[label]), statistics.median(cpus[label])
        print(json.dumps({"summary": label, "median_wall_s": median, "walls": walls[label],
                          "speedup_vs_" + first: round(base / median, 2), "median_cpu_s": median_cpu,
                          "cpus": cpus[label], "cpu_ratio_vs_" + first: round(base_cpu / median_cpu, 2),
                          "perplexities": sorted(ppl[label])}), flush=True)


if __name__ == "__main__":
    main()
