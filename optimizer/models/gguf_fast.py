"""A GGUF file's metadata read quickly while transformers builds the config and tokenizer.

transformers reads a GGUF file's metadata for the config, and again for the tokenizer. For the
architectures it lists in `GGUF_CONFIG_ARCHS` (5.24: qwen3.5, lfm2) it uses a fast struct
reader; for the others, ours among them, its legacy loader parses every field through the
`gguf` package into ~100k numpy memmap slices and then every vocabulary entry in Python: 2-3.5 s
a parse on 2 cores for SmolLM2's 49k tokens, ~15 s for Gemma-3's 262k. `fast_gguf()` makes,
for the duration of one load:

- where transformers has `GGUF_CONFIG_ARCHS` (5.24): an entry for each architecture of
  `optimizer.models.gguf_config` that it does not list itself, which builds the config the
  legacy loader would (both config and tokenizer then take the fast reader); and that reader's
  file as a plain-ndarray view of its memory map: it slices one string out of it per vocabulary
  entry and merge (~100k), and a `np.memmap` slice costs a Python-level `__array_finalize__`
  each (0.45 of the tokenizer's 0.6 s), a plain view's does not (the same bytes);
- otherwise (5.17): `gguf.GGUFReader` a subclass that parses into plain-ndarray views of the
  memory-mapped file (the same values as memmap slices, which cost a Python call each), and
  transformers' `load_gguf_checkpoint` without tensors done once per path (the one caller of
  the reader), callers getting copies of its result.

transformers looks both up when it loads, so the replacements are what it calls. Everything
is restored on exit. The weights do not go through transformers at all
(optimizer.models.gguf_weights).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextmanager
def fast_gguf() -> Iterator[None]:
    try:
        from transformers.integrations.gguf.gguf_config_mapping import GGUF_CONFIG_ARCHS
    except ImportError:  # transformers before the fast reader
        with _parsed_once():
            yield
        return
    import transformers.integrations.gguf.reader as hf_reader

    from optimizer.models.gguf_config import ARCHITECTURES, config_dict

    added = [arch for arch in ARCHITECTURES if arch not in GGUF_CONFIG_ARCHS]
    mapped = getattr(hf_reader, "_mapped", None)
    for arch in added:
        GGUF_CONFIG_ARCHS[arch] = config_dict
    if mapped is not None:
        hf_reader._mapped = lambda path: mapped(path).view(np.ndarray)  # the view keeps the map alive
    try:
        yield
    finally:
        for arch in added:
            GGUF_CONFIG_ARCHS.pop(arch, None)
        if mapped is not None:
            hf_reader._mapped = mapped


@contextmanager
def _parsed_once() -> Iterator[None]:
    """transformers 5.17: its legacy loader's metadata parsed once a path, on plain arrays."""
    import gguf
    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    reader_class, checkpoint = gguf.GGUFReader, getattr(hf_gguf, "load_gguf_checkpoint", None)

    class PlainViewReader(reader_class):  # the file as an ndarray view: slicing it is cheap
        @property
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._plain = value.view(np.ndarray)  # the view keeps the memory map alive

    metadata: dict[str, Any] = {}

    def load_checkpoint(path: Any, return_tensors: bool = False, **kwargs: Any) -> Any:
        if return_tensors or kwargs:
            return checkpoint(path, return_tensors=return_tensors, **kwargs)
        key = str(Path(path).resolve())
        if key not in metadata:
            metadata[key] = checkpoint(path, return_tensors=False)
        return copy.deepcopy(metadata[key])

    gguf.GGUFReader = PlainViewReader
    if checkpoint is not None:
        hf_gguf.load_gguf_checkpoint = load_checkpoint
    try:
        yield
    finally:
        gguf.GGUFReader = reader_class
        if checkpoint is not None:
            hf_gguf.load_gguf_checkpoint = checkpoint
        metadata.clear()
