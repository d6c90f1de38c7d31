"""A kernel variant's sources for the GPU benchmarks (gpu_gemv_chain.py, gpu_attention_probe.py):
a copy of runtime/custom_ops with another linear.cu or constants set.

    sources, env = variant_sources("now:kProgrammatic=true:env.OPTIMIZER_CUDA_PDL=0", scratch)
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "runtime" / "custom_ops"

TUNABLE = ("linear.cu", "linear_int4.cu", "linear_common.cuh", "attention.cu")  # where its constants may be


def variant_sources(variant: str, folder: Path) -> tuple[Path, dict]:
    """A copy of runtime/custom_ops for a variant, and its environment: `now`, `rev=REV` or
    `file=PATH` (the linear.cu it compiles), then `:NAME=VALUE` items: a constant (`constexpr ...
    NAME = VALUE;`) set in each of the TUNABLE files that defines it, or with NAME `env.VAR` an
    environment variable. The same sources give the same folder."""
    base, *items = variant.split(":")
    texts = {p.name: p.read_text() for p in OPS.iterdir() if p.suffix in (".h", ".cuh", ".cc", ".cu")}
    if base.startswith("rev="):
        texts["linear.cu"] = subprocess.run(["git", "show", f"{base[4:]}:runtime/custom_ops/linear.cu"], cwd=ROOT,
                                            capture_output=True, text=True, check=True).stdout
    elif base.startswith("file="):
        texts["linear.cu"] = Path(base[5:]).read_text()
    elif base != "now":
        raise SystemExit(f"unknown variant {variant!r}: now, rev=REV or file=PATH, then :NAME=VALUE items")
    env = {}
    for item in items:
        name, _, value = item.partition("=")
        if name.startswith("env."):
            env[name[4:]] = value
            continue
        pattern = rf"(constexpr [\w ]+ {re.escape(name)} = )[^;]+;"
        where = [f for f in TUNABLE if re.search(pattern, texts[f])]
        if not where:
            raise SystemExit(f"{variant}: no constant {name} in {', '.join(TUNABLE)}")
        for f in where:  # e.g. kProgrammatic: in both families' kernels
            texts[f] = re.sub(pattern, rf"\g<1>{value};", texts[f])
    digest = hashlib.sha256(repr(sorted(texts.items())).encode()).hexdigest()[:12]
    target = folder / f"sources-{digest}"
    target.mkdir(exist_ok=True)
    for name, text in texts.items():
        (target / name).write_text(text)
    return target, env
