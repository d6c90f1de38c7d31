"""GGUF load time and the fp32 build end to end, checkouts side by side in one run (issue 23:
GGUF load <= 5 s; `optimize model <SmolLM2 gguf> --out e` >= 2x faster).

Each checkout is a source tree (e.g. `git archive <commit> | tar -x -C /tmp/before`) run with
this repository's virtual environment and PYTHONPATH=<checkout>, in fresh processes that
alternate between the checkouts (round 1 of each, round 2 of each, ...; the order reversed
every other round) so that a shared machine's load falls on all alike. Dirty pages are flushed
(`sync`) before every run, so that one build's engine write does not slow the next one's.

- load: a process that imports torch, then calls `load_model(gguf)`; it reports both times, the
  time from its start (the parent's clock before it started the interpreter) to the model in
  hand (`ready_s`), and the sha256 of the loaded state dict (every tensor's bytes, in name
  order: the same weights bit for bit in every checkout, or the table says otherwise).
- build: `optimize model <gguf> --out DIR` (fp32 unless --build-flags say otherwise), timed
  start to exit, with its own "load model" step's seconds from the JSON log; the engine files'
  sha256 (all but the manifest, which records times) compared across checkouts.

    flock /tmp/bench.lock python benchmarks/gguf_load.py --checkout before=/tmp/before \\
        --checkout after=. --rounds 5 --out benchmarks/results/gguf-load
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402

LOAD_CHILD = """
import hashlib, json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from optimizer.models.loader import load_model
loaded = load_model(sys.argv[1], quiet=True)
t2 = time.perf_counter()
ready = time.time() - float(sys.argv[2])  # since the parent started this process
digest = hashlib.sha256()
for name, tensor in sorted(loaded.model.state_dict().items()):
    digest.update(name.encode()); digest.update(tensor.contiguous().numpy().tobytes())
print(json.dumps({"import_torch_s": t1 - t0, "load_model_s": t2 - t1, "ready_s": ready,
                  "weights_sha256": digest.hexdigest()[:16]}))
"""


def timed(cmd: list[str], checkout: Path) -> tuple[float, str, float]:
    """(wall seconds, output, 1-minute load average before) of `cmd` run from / (so that only
    PYTHONPATH decides which sources are imported)."""
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd="/", capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall, out.stdout + out.stderr, load


def run_load(checkout: Path, gguf: str) -> dict:
    os.sync()
    _, output, load = timed([sys.executable, "-c", LOAD_CHILD, gguf, repr(time.time())], checkout)
    child = json.loads(output.strip().splitlines()[-1])
    return {"ready_s": round(child["ready_s"], 2), "import_torch_s": round(child["import_torch_s"], 2),
            "load_model_s": round(child["load_model_s"], 2), "weights": child["weights_sha256"],
            "load_avg_1m": round(load, 2)}


def engine_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.name != "manifest.json"):
        digest.update(path.name.encode())
        with path.open("rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()[:16]


def run_build(checkout: Path, gguf: str, out: Path, flags: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    cmd = [sys.executable, "-c", "from optimizer.cli import main; main()", "--log-format", "json",
           "model", gguf, "--out", str(out), *flags]
    wall, output, load = timed(cmd, checkout)
    steps = {e["step"].split(":")[0].split(" (")[0]: e["seconds"] for e in map(_json_or_none, output.splitlines())
             if e and e.get("event") == "step_end"}
    return {"build_s": round(wall, 2), "load_step_s": steps.get("load model"), "engine": engine_digest(out),
            "load_avg_1m": round(load, 2), "steps": steps,
            "outside_steps_s": round(wall - sum(steps.values()), 2)}  # interpreter, imports, exit


def _json_or_none(line: str) -> dict | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def summary(rows: list[dict], labels: list[str], key: str) -> dict[str, dict]:
    """Per checkout: the values of `key` by round, median, min, max, and the first checkout's
    median over this one's."""
    values = {label: [r[key] for r in rows if r["checkout"] == label and r.get(key) is not None] for label in labels}
    base = statistics.median(values[labels[0]])
    return {label: {"values": v, "median": round(statistics.median(v), 2), "min": min(v), "max": max(v),
                    "speedup": round(base / statistics.median(v), 2)} for label, v in values.items()}


def step_table(rows: list[dict], labels: list[str]) -> str:
    """Median seconds of each build step (and of the time outside them) per checkout."""
    names = list(dict.fromkeys(name for r in rows for name in r["steps"])) + ["outside the steps"]
    lines = ["| step (median s) | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name in names:
        cells = []
        for label in labels:
            values = [r["outside_steps_s"] if name == "outside the steps" else r["steps"].get(name)
                      for r in rows if r["checkout"] == label]
            values = [v for v in values if v is not None]
            cells.append(f"{statistics.median(values):.2f}" if values else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(title: str, stats: dict[str, dict], first: str) -> str:
    lines = [f"| {title} | median s | min-max | rounds | {first} / this |", "|---|---|---|---|---|"]
    for label, s in stats.items():
        lines.append(f"| {label} | {s['median']:.2f} | {s['min']:.2f}-{s['max']:.2f} | "
                     f"{', '.join(f'{v:.2f}' for v in s['values'])} | {s['speedup']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkout", action="append", required=True, help="label=path (the first is the baseline)")
    ap.add_argument("--gguf", help="a .gguf file (default: the packaged SmolLM2-135M)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-build", action="store_true", help="time the load only")
    ap.add_argument("--build-flags", default="", help="more `optimize model` flags, for every checkout")
    ap.add_argument("--out", type=Path, help="write table.md and results.json here")
    args = ap.parse_args()
    if args.gguf is None:
        from optimizer.core.assets import fetch_asset

        args.gguf = str(fetch_asset("smollm2-135m", quiet=True))
    checkouts = [(c.split("=", 1)[0], Path(c.split("=", 1)[1])) for c in args.checkout]
    labels = [label for label, _ in checkouts]
    loads, builds = [], []
    with tempfile.TemporaryDirectory(prefix="gguf-load-") as tmp:
        for i in range(args.rounds):
            for label, path in (checkouts if i % 2 == 0 else checkouts[::-1]):
                row = {"checkout": label, "round": i + 1, **run_load(path, args.gguf)}
                loads.append(row)
                print(json.dumps(row), flush=True)
                if not args.no_build:
                    row = {"checkout": label, "round": i + 1,
                           **run_build(path, args.gguf, Path(tmp) / label, args.build_flags.split())}
                    builds.append(row)
                    print(json.dumps(row), flush=True)
    record = {"gguf": args.gguf, "checkouts": {label: str(path) for label, path in checkouts},
              "machine": f"{os.cpu_count()} CPUs", "loads": loads, "builds": builds,
              "load_model": summary(loads, labels, "load_model_s"), "load_ready": summary(loads, labels, "ready_s"),
              "weights_identical": len({r["weights"] for r in loads}) == 1}
    text = [f"GGUF: {args.gguf}, {args.rounds} rounds, checkouts alternating, fresh processes.\n",
            table("load_model() (after `import torch`)", record["load_model"], labels[0]), "",
            table("process start to model loaded (python, import torch, load_model)", record["load_ready"],
                  labels[0]), "",
            f"Weights (state dict sha256) identical across checkouts and rounds: {record['weights_identical']}"]
    if builds:
        record.update(build=summary(builds, labels, "build_s"), build_load_step=summary(builds, labels, "load_step_s"),
                      engines_identical=len({r["engine"] for r in builds}) == 1)
        text += ["", table("`optimize model` " + (args.build_flags or "fp32") + " end to end", record["build"],
                           labels[0]),
                 "", table("its \"load model\" step", record["build_load_step"], labels[0]), "",
                 step_table(builds, labels), "",
                 f"Engine files (all but manifest.json) identical across checkouts and rounds: "
                 f"{record['engines_identical']}"]
    print("\n".join(text))
    if args.out:
        write_results(args.out, "\n".join(text) + "\n", record)


if __name__ == "__main__":
    main()
