"""How the benchmarks record what they measured: a human table and the machine-readable record,
each with the command line that reproduces them.

    write_results(out, text, {"engine": ..., "summary": ...})
    # out/table.md = text; out/results.json = {"command": "python speculative.py ...", ...}
    report_line({"linear": "qkv", "us": 7.5}, args.results)   # printed, and appended as a JSON line

Import it as `_results` (benchmarks/ is on the path of a script run from it) or as
`benchmarks._results`.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any


def command_line() -> str:
    """This process's command line as a shell would take it, the interpreter by its base name."""
    return shlex.join([Path(sys.executable).name, *sys.argv])


def env_switches() -> dict[str, str]:
    """The onnxruntime and runtime switches (ORT_*, OPTIMIZER_* but the cache's folder) of this
    process's environment: what a record says it was measured under."""
    return {k: v for k, v in os.environ.items() if k.startswith(("ORT_", "OPTIMIZER_")) and k != "OPTIMIZER_CACHE"}


def write_results(out: Path, text: str, record: dict[str, Any],
                  names: tuple[str, str] = ("table.md", "results.json")) -> None:
    """Write `text` to OUT/names[0] and `record`, the command line first, to OUT/names[1]."""
    out.mkdir(parents=True, exist_ok=True)
    (out / names[0]).write_text(text)
    (out / names[1]).write_text(json.dumps({"command": command_line(), **record}, indent=1))


def report_line(row: dict[str, Any], path: str | Path | None = None) -> None:
    """Print `row` as one JSON line and, where `path` is given, append it there (a device job's
    results come back line by line even when it is cut short)."""
    line = json.dumps(row)
    print(line, flush=True)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
