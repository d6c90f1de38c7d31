"""What the int4 GEMM's main loop costs in instructions, read from its SASS without a GPU.

    python benchmarks/sass_loop_stats.py [--source benchmarks/cuda/gemm_int4_probe.cu] [--match mma_kernel]
                                         [--results r.jsonl]

Compiles `--source` for sm_90a with nvcc (ptxas' register and spill counts), disassembles it
(cuobjdump, with nvdisasm on PATH; pip: nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm), and for each
kernel whose name contains `--match` finds the main loop (the backward branch over the first block
barrier) and counts its instructions: all of them, the tensor-core MMAs (mma.sync's, and the
warpgroup MMA's apart), instructions per mma.sync and the most frequent opcodes. One JSON line per
kernel. A static count, not a timing: what it says is how much issue work a step of K takes, the
loop's share of a latency-bound kernel's time.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from _nvcc import ROOT, nvcc_command
from _results import report_line

INSTRUCTION = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);")
PTXAS_KERNEL = re.compile(r"Compiling entry function '(\S+)'")
PTXAS_USE = re.compile(r"Used (\d+) registers")
PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_with_counts(source: Path, out: Path) -> dict[str, dict[str, int]]:
    """Build `source` into `out` and return ptxas' registers and spill bytes by kernel."""
    command = nvcc_command(out, [source], [ROOT / "runtime" / "custom_ops"]) + ["-Xptxas", "-v"]
    log = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    counts, kernel = {}, None
    for line in log.splitlines():
        if m := PTXAS_KERNEL.search(line):
            kernel = m.group(1)
            counts[kernel] = {}
        elif kernel and (m := PTXAS_SPILL.search(line)):
            counts[kernel]["spill_bytes"] = int(m.group(1)) + int(m.group(2))
        elif kernel and (m := PTXAS_USE.search(line)):
            counts[kernel]["registers"] = int(m.group(1))
    return counts


def parse(listing: str) -> list[tuple[int, str]]:
    """(address, instruction) of each line of a cuobjdump listing."""
    return [(int(m.group(1), 16), m.group(2).strip()) for m in map(INSTRUCTION.match, listing.splitlines()) if m]


def loop_bounds(instructions: list[tuple[int, str]]) -> tuple[int, int] | None:
    """The first and last address of the loop whose backward branch spans the first BAR.SYNC (the
    main loop of a kernel that waits for each step's stage), or None."""
    barriers = [at for at, text in instructions if "BAR.SYNC" in text]
    if not barriers:
        return None
    for at, text in instructions:
        if "BRA" in text and at > barriers[0]:
            target = int(text.split("BRA")[1].split()[0].rstrip(";"), 16)
            if target <= barriers[0]:
                return target, at
    return None


def loop_of(instructions: list[tuple[int, str]]) -> list[str]:
    """The instructions of that loop."""
    bounds = loop_bounds(instructions)
    return [t for a, t in instructions if bounds and bounds[0] <= a <= bounds[1]]


def opcode(text: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=Path(__file__).resolve().parent / "cuda" / "gemm_int4_probe.cu")
    ap.add_argument("--match", default="mma_kernel")
    ap.add_argument("--results")
    args = ap.parse_args()
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump is None or shutil.which("nvdisasm") is None:
        raise SystemExit("needs cuobjdump and nvdisasm on PATH "
                         "(pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm: their bin folders)")
    with tempfile.TemporaryDirectory() as scratch:
        library = Path(scratch) / "kernels.so"
        counts = compile_with_counts(args.source.resolve(), library)
        sass = subprocess.run([cuobjdump, "-sass", str(library)], capture_output=True, text=True, check=True).stdout
    for chunk in sass.split("Function : ")[1:]:
        name = chunk.split("\n")[0].strip()
        if args.match not in name:
            continue
        loop = loop_of(parse(chunk))
        ops = Counter(map(opcode, loop))
        mma = ops["HMMA"]  # mma.sync; the warpgroup MMA's (HGMMA) a warpgroup issues together
        report_line({"kernel": name, **counts.get(name, {}), "loop_instructions": len(loop), "mma": mma,
                     "per_mma": round(len(loop) / mma, 2) if mma else None, "wgmma": ops["HGMMA"],
                     "top": dict(ops.most_common(8))}, args.results)


if __name__ == "__main__":
    main()
