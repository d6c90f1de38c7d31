"""nvcc for the GPU probes' libraries (benchmarks/cuda/ entry points, runtime/custom_ops kernels):
one compiler line, SASS for the H100 / H200 (sm_90a: the warpgroup MMA's target).

    lib = compile_library(out, [source, ...], includes=[folder])   # ctypes.CDLL, built once
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def nvcc_command(out: Path, sources: Sequence[Path], includes: Sequence[Path] = (),
                 libraries: Sequence[str] = ()) -> list[str]:
    """The line that builds `sources` into the shared library `out` (runtime.custom_ops's nvcc)."""
    sys.path.insert(0, str(ROOT))
    from runtime.custom_ops import find_nvcc

    nvcc = find_nvcc()
    if nvcc is None:
        raise SystemExit("the GPU probes need nvcc (PATH, $CUDA_HOME/bin or /usr/local/cuda/bin)")
    return [nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-shared", *(f"-I{i}" for i in includes),
            "-gencode=arch=compute_90a,code=sm_90a", "-o", str(out), *map(str, sources), *libraries]


def source_digest(command: Sequence[str], sources: Sequence[Path], includes: Sequence[Path]) -> str:
    """What a build depends on: its command line and every file in the folders of its sources and
    includes, and in runtime/custom_ops (the kernels' headers)."""
    digest = hashlib.sha256("\0".join(command).encode())
    folders = {ROOT / "runtime" / "custom_ops", *(Path(s).resolve().parent for s in sources), *map(Path, includes)}
    for folder in sorted(folders):
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def compile_library(out: Path, sources: Sequence[Path], includes: Sequence[Path] = (),
                    libraries: Sequence[str] = ()) -> ctypes.CDLL:
    """The library built from `sources`, once: later calls with the same sources, headers and
    command load it from $OPTIMIZER_NVCC_CACHE (default: the temporary folder's optimizer-nvcc/)."""
    cache = Path(os.environ.get("OPTIMIZER_NVCC_CACHE", Path(tempfile.gettempdir()) / "optimizer-nvcc"))
    cache.mkdir(parents=True, exist_ok=True)
    key = source_digest(nvcc_command(Path(out.name), sources, includes, libraries), sources, includes)
    built = cache / f"{out.stem}-{key}.so"
    if not built.exists():
        partial = cache / f"{out.stem}-{key}.partial-{os.getpid()}.so"
        subprocess.run(nvcc_command(partial, sources, includes, libraries), check=True)
        partial.replace(built)
    return ctypes.CDLL(str(built))
