"""nvcc for the GPU probes' libraries (benchmarks/cuda/ entry points, runtime/custom_ops kernels):
one compiler line, SASS for the H100 / H200 (sm_90).

    lib = compile_library(out, [source, ...], includes=[folder])   # ctypes.CDLL
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
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
            "-gencode=arch=compute_90,code=sm_90", "-o", str(out), *map(str, sources), *libraries]


def compile_library(out: Path, sources: Sequence[Path], includes: Sequence[Path] = (),
                    libraries: Sequence[str] = ()) -> ctypes.CDLL:
    subprocess.run(nvcc_command(out, sources, includes, libraries), check=True)
    return ctypes.CDLL(str(out))
