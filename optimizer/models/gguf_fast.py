"""A GGUF file's metadata read once, quickly, while transformers builds the config and tokenizer.

transformers reads the metadata of a GGUF file through the `gguf` package for the config and
again for the tokenizer (5.17; 5.24 reads the tokenizer's with its own reader), each time
parsing every field into numpy memmap slices (~100k of them for a 49k-token vocabulary: 2-3.5 s
a parse on 2 cores) and then every vocabulary entry in Python. `fast_gguf()` makes, for the
duration of one load:

- `gguf.GGUFReader` a subclass that parses into plain-ndarray views of the memory-mapped file
  (the same values as memmap slices, which cost a Python call each);
- transformers' `load_gguf_checkpoint` without tensors done once per path (the one caller of
  the reader), callers getting copies of its result.

transformers imports both names inside its functions, so the replacements are what it calls.
Both are restored on exit and the parsed metadata released. The weights do not go through
transformers at all (optimizer.models.gguf_weights).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextmanager
def fast_gguf() -> Iterator[None]:
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
