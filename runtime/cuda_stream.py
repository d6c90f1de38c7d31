"""A CUDA stream, page-locked host arrays and asynchronous copies, through the CUDA runtime
library that onnxruntime-gpu loaded (`runtime.gpu_memory.cudart`): what multi-step decoding
(`runtime.multi_step`) needs to queue copies between onnxruntime's graph replays.

onnxruntime runs a session on the stream given as the CUDA provider's `user_compute_stream`
(and captures and replays its CUDA graphs there), so copies queued here on the same stream
run in order with its steps, without the host waiting in between.
"""

from __future__ import annotations

import ctypes

import numpy as np

from runtime.gpu_memory import _check, cudart

H2D, D2H, D2D = 1, 2, 3  # cudaMemcpyKind
NON_BLOCKING = 1  # cudaStreamNonBlocking: no implicit order with the legacy default stream


class Stream:
    """A CUDA stream of its own. It is never destroyed: a session given it may use it until the
    session itself is gone, which Python does not order with the stream's own end."""

    def __init__(self) -> None:
        self.handle = ctypes.c_void_p()
        _check(cudart().cudaStreamCreateWithFlags(ctypes.byref(self.handle), ctypes.c_uint(NON_BLOCKING)),
               "cudaStreamCreateWithFlags")

    @property
    def address(self) -> int:
        return int(self.handle.value or 0)

    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        """Queue a copy of `nbytes` from address `src` to `dst` (cudaMemcpyAsync)."""
        _check(cudart().cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                                        ctypes.c_int(kind), self.handle), "cudaMemcpyAsync")

    def synchronize(self) -> None:
        _check(cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")


class PinnedArray:
    """A page-locked host array (cudaMallocHost) seen as numpy `array`; freed when dropped."""

    def __init__(self, shape: tuple[int, ...], dtype) -> None:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        self.ptr = ctypes.c_void_p()
        _check(cudart().cudaMallocHost(ctypes.byref(self.ptr), ctypes.c_size_t(max(nbytes, 1))), "cudaMallocHost")
        raw = (ctypes.c_byte * max(nbytes, 1)).from_address(self.ptr.value)
        self.array = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
        self.array[...] = 0

    @property
    def address(self) -> int:
        return int(self.ptr.value or 0)

    def __del__(self) -> None:
        if getattr(self, "ptr", None) is not None and self.ptr.value:
            cudart().cudaFreeHost(self.ptr)
            self.ptr = None
