"""The tensors of a GGUF file, memory-mapped, without parsing its metadata into objects.

A GGUF file is: a header (magic, version, tensor count, metadata count), the metadata
key/values, the tensor infos (name, dims, ggml type, offset), then the tensor data at the
alignment (`general.alignment`, default 32). `read_tensors` walks the metadata with struct
(only `general.alignment` is kept), reads the infos, and returns each tensor as a numpy view of
the mapped file in the layout `gguf.quants.dequantize` takes (values for F32/F16/BF16, bytes
per row for block formats). Every count, length and offset is checked against the file's size,
so a truncated or lying file is an InputError naming what was wrong, never a huge allocation.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optimizer.core.errors import InputError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# metadata value types: fixed widths; 8 = string, 9 = array
_WIDTH = {0: 1, 1: 1, 7: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_VALUES = {0: np.float32, 1: np.float16}  # ggml types stored as plain values
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class GgufTensor:
    name: str
    tensor_type: int  # a gguf.GGMLQuantizationType value
    shape: tuple[int, ...]  # numpy order (GGUF dims reversed): rows first
    data: np.ndarray  # a view of the mapped file


class _Cursor:
    """Reads little-endian values from the mapped file, checking each against its end."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise self.truncated()
        self.pos += n
        return start

    def truncated(self) -> InputError:
        return InputError(f"cannot read GGUF file {self.path}: it is truncated or corrupt (a field at byte "
                          f"{self.pos} runs past the end, {len(self.buf)} bytes)",
                          hint="re-download or re-assemble the file")

    def u32(self) -> int:
        return struct.unpack_from("<I", self.buf, self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack_from("<Q", self.buf, self.take(8))[0]

    def string(self) -> str:
        n = self.u64()
        start = self.take(n)
        return bytes(self.buf[start:start + n]).decode("utf-8", errors="replace")

    def skip_value(self, vtype: int) -> None:
        if vtype == _STRING:
            self.take(self.u64())
        elif vtype == _ARRAY:
            etype, count = self.u32(), self.u64()
            if etype == _STRING:
                self.skip_strings(count)
            elif etype in _WIDTH:
                self.take(count * _WIDTH[etype])
            else:
                raise self.bad(f"unknown array element type {etype}")
        elif vtype in _WIDTH:
            self.take(_WIDTH[vtype])
        else:
            raise self.bad(f"unknown metadata value type {vtype}")

    def skip_strings(self, count: int) -> None:
        """Skip `count` strings: a vocabulary's ~100k, in a tight loop (0.03 s, against 0.1 s
        through take / u64). Each length is read only where it lies within the file."""
        buf, pos, end, length = self.buf, self.pos, len(self.buf), _U64.unpack_from
        for _ in range(count):  # each string takes 8 bytes at least: a lying count ends the loop soon
            if pos + 8 > end:
                break
            pos += 8 + length(buf, pos)[0]
        else:
            if pos <= end:
                self.pos = pos
                return
        raise self.truncated()

    def bad(self, what: str) -> InputError:
        return InputError(f"cannot read GGUF file {self.path}: it is corrupt ({what}, at byte {self.pos})",
                          hint="re-download or re-assemble the file")


def read_tensors(path: Path) -> list[GgufTensor]:
    """Every tensor of the GGUF file at `path`, as views of the memory-mapped file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    buf = memoryview(mapped)
    cur = _Cursor(buf, path)
    if bytes(buf[cur.take(4):4]) != MAGIC:
        raise InputError(f"cannot read GGUF file {path}: it is not a GGUF file (no GGUF magic number)",
                         hint="pass a .gguf model file")
    version = cur.u32()
    if version not in VERSIONS:
        raise InputError(f"cannot read GGUF file {path}: GGUF version {version} is not supported",
                         hint="versions: 2, 3")
    n_tensors, n_kv = cur.u64(), cur.u64()
    if n_tensors > len(buf) // 16 or n_kv > len(buf) // 8:  # each entry takes at least that much
        raise cur.bad(f"{n_tensors} tensors and {n_kv} metadata entries cannot fit in {len(buf)} bytes")
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key, vtype = cur.string(), cur.u32()
        if key == "general.alignment" and vtype == 4:
            alignment = struct.unpack_from("<I", buf, cur.take(4))[0]
        else:
            cur.skip_value(vtype)
    infos, seen = [], set()
    for _ in range(n_tensors):
        name, n_dims = cur.string(), cur.u32()
        if name in seen:
            raise cur.bad(f"tensor {name!r} is listed twice")
        seen.add(name)
        if n_dims > 8:
            raise cur.bad(f"tensor {name!r} has {n_dims} dimensions")
        dims = [cur.u64() for _ in range(n_dims)]
        ttype, offset = cur.u32(), cur.u64()
        infos.append((name, dims, ttype, offset))
    if alignment <= 0 or alignment & (alignment - 1):
        raise cur.bad(f"alignment {alignment} is not a power of two")
    data_start = -(-cur.pos // alignment) * alignment
    tensors = []
    for name, dims, ttype, offset in infos:
        try:
            qtype = GGMLQuantizationType(ttype)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise cur.bad(f"tensor {name!r} has unknown ggml type {ttype}") from None
        shape = tuple(reversed(dims)) or (1,)
        count = math.prod(shape)  # Python integers: a lying header cannot overflow them
        if shape[-1] % block:
            raise cur.bad(f"tensor {name!r}: row of {shape[-1]} values is not a whole number of {block}-value blocks")
        nbytes = count // block * type_size
        start = data_start + offset
        if start + nbytes > len(buf):
            raise cur.bad(f"tensor {name!r} ({nbytes} bytes at offset {offset}) runs past the end of the file")
        raw = np.frombuffer(mapped, dtype=np.uint8, count=nbytes, offset=start)
        if ttype in _VALUES:  # F32 / F16: the values
            data = raw.view(_VALUES[ttype]).reshape(shape)
        else:  # block formats (and BF16): bytes per row, as gguf's dequantize takes them
            data = raw.reshape(*shape[:-1], shape[-1] // block * type_size)
        tensors.append(GgufTensor(name, ttype, shape, data))
    return tensors
