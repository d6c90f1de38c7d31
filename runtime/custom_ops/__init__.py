"""Our onnxruntime custom ops (domain `optimizer.ops`), built from the C++ / CUDA sources beside
this file into a shared library that onnxruntime loads per session.

    path = library()                      # built once into $OPTIMIZER_CACHE/custom_ops/<hash>/
    register(session_options)             # SessionOptions.register_custom_ops_library(path)
    providers(path)                       # {"cpu"} or {"cpu", "cuda"}

The library needs no onnxruntime header (`ort_abi.h` declares the ABI it uses). It is built with
nvcc where one is found (CPU and CUDA kernels; the CUDA ones for compute capabilities 8.0 and
9.0) and with g++ otherwise (CPU kernels only). Ops, float16 with fp32 math inside (ops.cc
has their full signatures):

    SwiGLU(x)                   x (..., 2I) gate then up -> silu(gate) * up (..., I)
    Linear(x, w)                x (..., K), w (N, K) -> x . w^T (..., N)
    LinearSwiGLU(x, w)          w (2N, K) gate rows, then up rows -> silu(x . wg^T) * (x . wu^T)
    NormLinear[SwiGLU](x, skip, gamma, w)
                                the same of rms_norm(x + skip) * gamma, and x + skip
    [Norm]LinearInt4[SwiGLU](x, [skip, gamma,] codes, scales[, zeros])
                                the same with 4-bit weights in onnxruntime MatMulNBits' layout
                                (attribute block_size, a multiple of 32; no zeros: 8)
    LinearInt4NormLinearInt4[SwiGLU](x, codes_a, scales_a[, zeros_a], skip, gamma, codes, scales[, zeros])
                                LinearInt4 by the first weights, then NormLinearInt4[SwiGLU] of its
                                output: on CUDA above 4 rows the norm's kernel adds the first
                                GEMM's K parts (no conversion kernel between)
    CachedAttention(q, past_k, past_v, seqlens_k, total_sequence_length, cos, sin[, k, v])
                                onnxruntime GroupQueryAttention's with its rotary: the new keys
                                and values into the cache (in place where present is bound to
                                past's buffer), then causal attention over it (packed q/k/v where
                                k, v are absent)

On CUDA the Linear family is one GEMV kernel for up to 4 rows (decode), and our norm kernel,
cuBLAS (onnxruntime's handle, found through its CUDA provider) and the SwiGLU kernel for more;
the LinearInt4 family the same, its weights dequantized band by band for cuBLAS; CachedAttention
one kernel (rotary, cache writes and attention) where GroupQueryAttention launches four.
They run on onnxruntime's compute stream, so a captured decode graph records them.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from optimizer.core.errors import OptimizerError

DOMAIN = "optimizer.ops"
SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("ort_abi.h", "cublas_abi.h", "cuda_kernels.h", "kernel_context.h", "linear_cpu.h", "linear_common.cuh",
           "pdl.cuh", "device_primitives.cuh", "gemm_int4_mma.cuh", "gemm_int4_plan.h", "gemm_int4_fragments.h",
           "int4_bands.h", "op_math.h", "attention_math.h", "attention_mma.cuh", "ops.cc", "swiglu_op.cc",
           "linear_op.cc", "linear_int4_op.cc", "attention_op.cc", "swiglu.cu", "linear.cu", "linear_int4.cu",
           "attention.cu", "cuda_none.cc")
HOST_SOURCES = ("ops.cc", "swiglu_op.cc", "linear_op.cc", "linear_int4_op.cc", "attention_op.cc")
CUDA_SOURCES = (*HOST_SOURCES, "swiglu.cu", "linear.cu", "linear_int4.cu", "attention.cu")  # nvcc's build
CPU_SOURCES = (*HOST_SOURCES, "cuda_none.cc")  # g++'s: the CUDA entry points say there are none
# SASS for each (90a: the H100 / H200's, Hopper's warpgroup MMA included, which gemm_int4_mma.cuh's
# warpgroup tile needs), and PTX of CUDA_PTX_ARCH for GPUs after them
CUDA_ARCHS = ("80", "90a")
CUDA_PTX_ARCH = "90"
NAME = "liboptimizer_ops.so"


class CustomOpsError(OptimizerError):
    """The custom-op library could not be built or loaded."""


def find_nvcc() -> str | None:
    """nvcc on PATH, else under $CUDA_HOME or /usr/local/cuda, else the newest /usr/local/cuda-X.Y."""
    versioned = sorted(glob.glob("/usr/local/cuda-*/bin/nvcc"),
                       key=lambda p: [int(n) for n in re.findall(r"\d+", p.split("cuda-")[1])], reverse=True)
    for candidate in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"),
                      *versioned):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def build_command(out: Path, nvcc: str | None) -> list[str]:
    """The compiler line: nvcc with the CUDA kernels, or g++ with the CPU-only stand-ins."""
    common = ["-O3", "-std=c++17", "-shared", "-o", str(out)]
    if nvcc:
        archs = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS]
        archs.append(f"-gencode=arch=compute_{CUDA_PTX_ARCH},code=compute_{CUDA_PTX_ARCH}")
        # --threads 0: each architecture's code compiled at the same time, on as many cores
        return [nvcc, *common, "--threads", "0", "-Xcompiler", "-fPIC,-pthread", *archs,
                *(str(SOURCE_DIR / f) for f in CUDA_SOURCES), "-ldl"]
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise CustomOpsError("building the optimizer.ops library needs a C++ compiler (g++) and none was found",
                             hint="install g++ (Debian: apt-get install g++), and nvcc for its CUDA kernels")
    return [compiler, *common, "-fPIC", "-pthread", *(str(SOURCE_DIR / f) for f in CPU_SOURCES)]


def source_key(nvcc: str | None) -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    digest.update(f"cuda={bool(nvcc)} archs={','.join(CUDA_ARCHS)} ptx={CUDA_PTX_ARCH}".encode())
    return digest.hexdigest()[:16]


def library() -> Path:
    """The built library's path, building it on first use (atomically: a half-built file is
    never where a session would load it)."""
    from optimizer.core.assets import cache_dir

    nvcc = find_nvcc()
    folder = cache_dir() / "custom_ops" / source_key(nvcc)
    path = folder / NAME
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        partial = Path(scratch) / NAME
        done = subprocess.run(build_command(partial, nvcc), capture_output=True, text=True)
        if done.returncode != 0:
            raise CustomOpsError(f"building the optimizer.ops library failed:\n{done.stderr.strip()[-2000:]}",
                                 hint="the compiler's message is above; CUDA_HOME picks the CUDA toolkit")
        os.replace(partial, path)
    return path


def providers(path: Path) -> set[str]:
    """The execution providers the built library has kernels for."""
    lib = ctypes.CDLL(str(path))
    lib.optimizer_ops_providers.restype = ctypes.c_char_p
    return set(lib.optimizer_ops_providers().decode().split(","))


def register(session_options, cuda: bool = False) -> Path:
    """Register the library with onnxruntime session options; with `cuda`, refuse a build
    that has no CUDA kernels rather than let onnxruntime place the ops on the CPU."""
    path = library()
    if cuda and "cuda" not in providers(path):
        raise CustomOpsError("the optimizer.ops library was built without CUDA kernels (no nvcc where it was built)",
                             hint="install the CUDA toolkit (nvcc on PATH, or CUDA_HOME): the library is then "
                                  "rebuilt with its CUDA kernels, beside this one")
    session_options.register_custom_ops_library(str(path))
    return path
