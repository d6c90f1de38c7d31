"""Builds a small C++ program against the custom-op sources with g++, for the tests that run the
CUDA kernels' host-side math (and, with tests/cuda_emulation.h, the kernels themselves) on a CPU.

    binary = build(folder, SOURCE, "-std=c++20", "-pthread")   # -I runtime/custom_ops and tests/
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from runtime import custom_ops


def build(folder: Path, source: str, *flags: str) -> Path:
    """`source` compiled into folder/harness; fails the test where there is no g++."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.fail("g++ is needed (the custom-op library builds with it too)")
    (folder / "harness.cc").write_text(source)
    binary = folder / "harness"
    subprocess.run([compiler, *(flags or ("-std=c++17",)), "-I", str(custom_ops.SOURCE_DIR), "-I",
                    str(Path(__file__).parent), str(folder / "harness.cc"), "-o", str(binary)], check=True)
    return binary
