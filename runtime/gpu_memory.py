"""Device memory for the paged KV cache: how much is free, and buffers outside onnxruntime's arena.

A paged engine's block pool can be sized at load time from the GPU's memory instead of the
manifest (`--gpu-memory-fraction F`, as vLLM's `--gpu-memory-utilization`): the executor runs
its largest step once (the prefill budget's tokens), so onnxruntime's arena holds the weights
and the activations of the biggest step, then reads the device's free and total memory and
gives the KV pool what is left of F x total:

    blocks = (free - (1 - F) x total) / bytes_per_block     (`blocks_for_fraction`)

The pool's buffers are allocated here with cudaMalloc (through the CUDA runtime library that
onnxruntime-gpu already loaded) rather than as onnxruntime values: the arena rounds large
requests up (to the next power of two by default) and keeps what it took, which would make
a pool of tens of GB cost twice that. A `DeviceBuffer` is freed when dropped.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

from optimizer.core.errors import EngineError

_NAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")
_cudart = None


def blocks_for_fraction(free: int, total: int, fraction: float, bytes_per_block: int) -> int:
    """Blocks that fit in what remains of `fraction` of the device once `total - free` is used."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the GPU memory fraction must be in (0, 1], got {fraction}")
    if bytes_per_block <= 0:
        raise ValueError(f"bytes per block must be positive, got {bytes_per_block}")
    budget = free - (1.0 - fraction) * total
    return max(0, int(budget // bytes_per_block))


def cudart() -> ctypes.CDLL:
    """The CUDA runtime library of this process (onnxruntime-gpu's, already loaded)."""
    global _cudart
    if _cudart is not None:
        return _cudart
    candidates = list(_NAMES)
    for root in sys.path:  # the pip-installed runtime (nvidia-cuda-runtime-cu1x)
        candidates += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", "libcudart.so*")))
        candidates += sorted(glob.glob(os.path.join(root, "nvidia", "cuda_runtime", "lib", "libcudart.so*")))
    for name in candidates:
        try:
            _cudart = ctypes.CDLL(name)
            return _cudart
        except OSError:
            continue
    raise EngineError("sizing the KV cache from GPU memory needs the CUDA runtime library (libcudart), "
                      "which was not found", hint="install onnxruntime-gpu with its CUDA libraries, or give "
                      "the pool's size instead (--gpu-memory-fraction off)")


def _check(code: int, what: str) -> None:
    if code != 0:
        lib = cudart()
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        raise EngineError(f"CUDA {what} failed: {lib.cudaGetErrorString(code).decode()} (error {code})")


def device_memory(device: int = 0) -> tuple[int, int]:
    """(free, total) bytes of a device, as the CUDA runtime reports them."""
    lib = cudart()
    _check(lib.cudaSetDevice(ctypes.c_int(device)), "cudaSetDevice")
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    _check(lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)), "cudaMemGetInfo")
    return free.value, total.value


def compute_capability(device: int = 0) -> str:
    """A device's compute capability, e.g. "9.0" (an H100 or H200)."""
    lib = cudart()
    major, minor = ctypes.c_int(), ctypes.c_int()
    for value, attribute in ((major, 75), (minor, 76)):  # cudaDevAttrComputeCapabilityMajor / Minor
        _check(lib.cudaDeviceGetAttribute(ctypes.byref(value), ctypes.c_int(attribute), ctypes.c_int(device)),
               "cudaDeviceGetAttribute")
    return f"{major.value}.{minor.value}"


class DeviceBuffer:
    """`nbytes` of zeroed device memory, freed when the object goes."""

    def __init__(self, nbytes: int, device: int = 0) -> None:
        lib = cudart()
        self.nbytes, self.ptr = nbytes, ctypes.c_void_p()
        _check(lib.cudaSetDevice(ctypes.c_int(device)), "cudaSetDevice")
        code = lib.cudaMalloc(ctypes.byref(self.ptr), ctypes.c_size_t(nbytes))
        if code != 0:
            raise EngineError(f"could not allocate {nbytes / 2**30:.2f} GiB of GPU memory for the KV cache "
                              f"(CUDA error {code})", hint="lower --gpu-memory-fraction or the number of blocks")
        _check(lib.cudaMemset(self.ptr, ctypes.c_int(0), ctypes.c_size_t(nbytes)), "cudaMemset")
        _check(lib.cudaDeviceSynchronize(), "cudaDeviceSynchronize")

    @property
    def address(self) -> int:
        return int(self.ptr.value or 0)

    def __del__(self) -> None:
        if getattr(self, "ptr", None) is not None and self.ptr.value and _cudart is not None:
            _cudart.cudaFree(self.ptr)
            self.ptr = None
