"""Weights read one tensor at a time: the streaming build's view of a checkpoint.

A `WeightSource` answers, by state-dict name, whether a tensor exists, its shape, and the
tensor itself as float32, or a range of its rows (materialized on each call, never cached
here), so a build can hold one layer's weights at a time whatever the model's size:

- `SafetensorsSource`: the *.safetensors files of a HuggingFace folder, read with positioned
  reads (only the requested tensor's bytes, or rows; no memory map, whose pages would count
  in the build's resident memory);
- `ModuleSource`: the parameters and buffers of a torch module already in memory (the
  ordinary build), so capture reads both kinds of model through one interface;
- `OverlaySource`: another source with some tensors replaced (a streamed calibrated build's
  parameters that calibration changed, e.g. norm weights AWQ's scales folded into).

A tied output projection (`config.tie_word_embeddings`, no lm_head tensor of its own) is
answered with the embedding's tensor: `tied_to` names the table it reads.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

import torch

from optimizer.core.errors import InputError


class WeightSource(Protocol):
    def names(self) -> Iterable[str]: ...

    def has(self, name: str) -> bool: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def tensor(self, name: str, rows: slice | None = None) -> torch.Tensor: ...


# safetensors dtype names -> torch dtypes (the float and integer kinds checkpoints hold)
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_MAX_HEADER = 100 << 20  # a safetensors header is JSON; anything near this is not a checkpoint


@dataclass(frozen=True)
class _Entry:
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # of the tensor's first byte in the file
    nbytes: int


class SafetensorsSource:
    """The tensors of `files` (one checkpoint, possibly sharded), each read when asked for.

    The header is parsed here, bounds-checked against the file, and a tensor (or a range of its
    rows) is read with positioned reads into memory of its own: nothing is memory-mapped, so
    the file's pages do not stay in this process's resident memory once the tensor is gone."""

    def __init__(self, files: list[Path], strict: bool = True) -> None:
        """`strict=False` accepts dtypes this reader does not convert (checked for bounds only):
        the in-memory load's preflight, where transformers reads the tensors."""
        self._entries: dict[str, _Entry] = {}
        for path in files:
            for name, entry in _read_header(path, strict).items():
                if name in self._entries:
                    raise InputError(f"tensor {name!r} is in two checkpoint files ({path.name} and "
                                     f"{self._entries[name].path.name})",
                                     hint="the folder should hold one checkpoint: remove stray .safetensors files")
                self._entries[name] = entry

    def names(self) -> Iterable[str]:
        return self._entries.keys()

    def has(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def tensor(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """float32; `rows` reads only those rows (dimension 0) from the file."""
        e = self._entry(name)
        shape, offset, nbytes = e.shape, e.offset, e.nbytes
        if rows is not None:
            start, stop, _ = rows.indices(shape[0])
            row_bytes = nbytes // shape[0] if shape[0] else 0
            shape = (max(0, stop - start),) + shape[1:]
            offset, nbytes = offset + start * row_bytes, shape[0] * row_bytes
        raw = torch.empty(nbytes, dtype=torch.uint8)
        with e.path.open("rb") as f:
            f.seek(offset)
            if f.readinto(memoryview(raw.numpy())) != nbytes:
                raise InputError(f"{e.path} ends inside tensor {name!r}",
                                 hint="the file is truncated: copy or download it again")
        return raw.view(e.dtype).reshape(shape).float()

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise InputError(f"the checkpoint has no tensor {name!r}",
                             hint="the checkpoint does not match its config's architecture")
        return entry


def _read_header(path: Path, strict: bool = True) -> dict[str, _Entry]:
    """A safetensors file's tensors, each checked to lie inside the file with the size its
    dtype and shape imply (for a dtype not in _DTYPES, with `strict=False`: inside the file)."""
    bad = lambda why: InputError(f"{path} is not a valid safetensors file: {why}",  # noqa: E731
                                 hint="check that the .safetensors files are complete and not corrupted")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad("shorter than its 8-byte header length")
        length = struct.unpack("<Q", head)[0]
        if length > min(_MAX_HEADER, size - 8):
            raise bad(f"a header of {length} bytes in a file of {size}")
        try:
            header = json.loads(f.read(length), object_pairs_hook=_unique_keys)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise bad(f"its header is not JSON ({exc})") from exc
        except _DuplicateKey as exc:
            raise bad(f"tensor {exc.args[0]!r} is listed twice") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    base, entries = 8 + length, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        unknown = isinstance(info, dict) and info.get("dtype") not in _DTYPES
        if unknown and not strict:
            try:
                shape = tuple(int(d) for d in info["shape"])
                start, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as exc:
                raise bad(f"tensor {name!r} has no shape / data_offsets it can read ({exc})") from exc
            if any(d < 0 for d in shape) or not 0 <= start <= end or base + end > size:
                raise bad(f"tensor {name!r} ({info['dtype']!r} {list(shape)}) at bytes [{start}, {end}) does not fit "
                          f"the file's {size - base} data bytes")
            entries[name] = _Entry(path, torch.uint8, shape, base + start, end - start)
            continue
        if unknown:
            raise InputError(f"{path}: tensor {name!r} is stored as {info.get('dtype')!r}, which --stream does not read",
                             hint="dtypes read: " + ", ".join(_DTYPES) + "; drop --stream for this checkpoint")
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"tensor {name!r} has no dtype / shape / data_offsets it can read ({exc})") from exc
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if any(d < 0 for d in shape) or not 0 <= start <= end or base + end > size \
                or math.prod(shape) * itemsize != end - start:
            raise bad(f"tensor {name!r} ({info['dtype']} {list(shape)}) at bytes [{start}, {end}) does not fit "
                      f"the file's {size - base} data bytes")
        entries[name] = _Entry(path, dtype, shape, base + start, end - start)
    return entries


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """json's object hook: a key given twice (a second tensor of the same name) is an error."""
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


class ModuleSource:
    """The state of a module in memory (no copies: `tensor` returns float32 views where it can)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.state = {k: v.detach() for k, v in module.state_dict().items()}

    def names(self) -> Iterable[str]:
        return self.state.keys()

    def has(self, name: str) -> bool:
        return name in self.state

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.state[name].shape)

    def tensor(self, name: str, rows: slice | None = None) -> torch.Tensor:
        if name not in self.state:
            raise InputError(f"the model has no weight {name!r}",
                             hint="the checkpoint does not match its declared architecture")
        value = self.state[name]
        return (value if rows is None else value[rows]).float()

    def same_storage(self, a: str, b: str) -> bool:
        return a in self.state and b in self.state and self.state[a].data_ptr() == self.state[b].data_ptr()


class OverlaySource:
    """`base`, except the tensors in `overrides` (same names and shapes, held in memory)."""

    def __init__(self, base: WeightSource, overrides: dict[str, torch.Tensor]) -> None:
        for name, value in overrides.items():
            if not base.has(name) or tuple(base.shape(name)) != tuple(value.shape):
                raise ValueError(f"override {name!r} {list(value.shape)} does not replace a tensor of the "
                                 "same shape")
        self.base, self.overrides = base, overrides

    def names(self) -> Iterable[str]:
        return self.base.names()

    def has(self, name: str) -> bool:
        return self.base.has(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def tensor(self, name: str, rows: slice | None = None) -> torch.Tensor:
        value = self.overrides.get(name)
        if value is None:
            return self.base.tensor(name, rows)
        return (value if rows is None else value[rows]).float()
