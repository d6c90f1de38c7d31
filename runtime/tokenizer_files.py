"""An engine's tokenizer, loaded from the files the build wrote (tokenizer.json and
tokenizer_config.json, saved by transformers).

Where tokenizer_config.json names transformers' generic fast tokenizer (`TokenizersBackend`,
called `PreTrainedTokenizerFast` before transformers 5; what engines built from GGUF files
store), that class is loaded directly: it is the class `AutoTokenizer` would resolve the name
to, given the same folder, and its module does not import torch. `AutoTokenizer`'s own import
does (through the model configurations): on the 2-core machine an engine's tokenizer took 3.2 s
to load that way and 1.1 s this way. Any other class name (a model's own tokenizer class, from
a transformers folder) goes through `AutoTokenizer` as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GENERIC = ("TokenizersBackend", "PreTrainedTokenizerFast")


def tokenizer_class_name(directory: Path) -> str | None:
    """The class tokenizer_config.json names, or None (no file, or no name in it)."""
    config = Path(directory) / "tokenizer_config.json"
    try:
        return json.loads(config.read_text()).get("tokenizer_class")
    except (OSError, ValueError):
        return None


def load_tokenizer(directory: Path) -> Any:
    name = tokenizer_class_name(directory)
    if name in GENERIC:
        import transformers

        cls = getattr(transformers, name, None)  # the name this transformers knows it by
        if cls is not None:
            return cls.from_pretrained(directory)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)
