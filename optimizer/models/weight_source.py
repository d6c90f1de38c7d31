"""Weights read one tensor at a time: the streaming build's view of a checkpoint.

A `WeightSource` answers, by state-dict name, whether a tensor exists, its shape, and the
tensor itself as float32, or a range of its rows (materialized on each call, never cached
here), so a build can hold one layer's weights at a time whatever the model's size:

- `SafetensorsSource`: the *.safetensors files of a HuggingFace folder, memory-mapped
  (safetensors' own reader; only the requested tensor's bytes are read);
- `ModuleSource`: the parameters and buffers of a torch module already in memory (the
  ordinary build), so capture reads both kinds of model through one interface.

A tied output projection (`config.tie_word_embeddings`, no lm_head tensor of its own) is
answered with the embedding's tensor: `tied_to` names the table it reads.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterable, Protocol

import torch

from optimizer.core.errors import InputError


class WeightSource(Protocol):
    def names(self) -> Iterable[str]: ...

    def has(self, name: str) -> bool: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def tensor(self, name: str, rows: slice | None = None) -> torch.Tensor: ...


class SafetensorsSource:
    """The tensors of `files` (one checkpoint, possibly sharded), read lazily."""

    def __init__(self, files: list[Path]) -> None:
        from safetensors import safe_open

        self._stack = ExitStack()
        self._where: dict[str, Any] = {}
        for path in files:
            try:
                handle = self._stack.enter_context(safe_open(str(path), framework="pt"))
            except Exception as exc:  # safetensors raises its own errors on bad headers
                self._stack.close()
                raise InputError(f"cannot read {path}: {exc}",
                                 hint="check that the .safetensors files are complete and not corrupted") from exc
            for name in handle.keys():
                if name in self._where:
                    self._stack.close()
                    raise InputError(f"tensor {name!r} is in two checkpoint files ({path.name} and another)",
                                     hint="the folder should hold one checkpoint: remove stray .safetensors files")
                self._where[name] = handle

    def names(self) -> Iterable[str]:
        return self._where.keys()

    def has(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def tensor(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """float32; `rows` reads only those rows (dimension 0) from the file."""
        handle = self._handle(name)
        if rows is None:
            return handle.get_tensor(name).float()
        return handle.get_slice(name)[rows].float()

    def _handle(self, name: str) -> Any:
        handle = self._where.get(name)
        if handle is None:
            raise InputError(f"the checkpoint has no tensor {name!r}",
                             hint="the checkpoint does not match its config's architecture")
        return handle

    def close(self) -> None:
        self._stack.close()


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
