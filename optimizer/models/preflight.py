"""Checks made before a model's weights are allocated: hostile or broken files end as an
InputError naming what was wrong, never as an out-of-memory kill.

A config's sizes decide what transformers allocates, and a file's headers decide what is read,
so both are checked from metadata alone, on a skeleton of the model whose parameters live on
the meta device (no memory):

- every parameter the config implies is in the file with that shape (a config whose sizes
  disagree with the weights, a file missing tensors);
- the fp32 model fits in this machine's memory (a config or header with absurd sizes).

The files' own headers are bounds-checked where they are parsed (weight_source.py for
safetensors, gguf_tensors.py for GGUF).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from optimizer.core.errors import InputError


def read_config_json(folder: Path) -> dict[str, Any]:
    """A model folder's config.json as a dict, or an InputError naming the file."""
    path = folder / "config.json"
    try:
        values = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc})", hint="fix or replace the model's config.json") from exc
    if not isinstance(values, dict):
        raise InputError(f"{path} is not a JSON object", hint="fix or replace the model's config.json")
    return values


def meta_model(config: Any, trust_remote_code: bool = False) -> Any:
    """The causal-LM module of `config`, every tensor on the meta device (nothing allocated)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers' checks of a config's values raise several kinds
        raise InputError(f"the model's config is not consistent: {exc}",
                         hint="check config.json's sizes (hidden_size, heads, layers, vocab_size)") from exc


def parameter_bytes(model: Any) -> int:
    """Bytes of the module's parameters in fp32 (tied ones counted once)."""
    return sum(math.prod(p.shape) * 4 for p in model.parameters())


def memory_bytes() -> int:
    """Physical memory plus swap of this machine (what an allocation can ever get)."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo") as f:
            swap = next((int(line.split()[1]) * 1024 for line in f if line.startswith("SwapTotal:")), 0)
    except OSError:  # not Linux
        swap = 0
    return total + swap


def check_fits(model: Any, what: str, stream_hint: bool = True) -> None:
    """Refuse a model whose fp32 weights cannot fit in this machine's memory, before allocating."""
    need, have = parameter_bytes(model), memory_bytes()
    if need > have:
        raise InputError(f"{what} needs {need / 2**30:.1f} GiB for its fp32 weights, more than this machine's "
                         f"{have / 2**30:.1f} GiB of memory",
                         hint=("build with --stream (weights read one tensor at a time), " if stream_hint else "")
                         + "or check the config's sizes (hidden_size, intermediate_size, vocab_size, layers)")


def check_model_files(config: Any, arch: Any, open_weights: Any, trust_remote_code: bool = False) -> Any:
    """Before an in-memory load: the file's tensors (`open_weights(meta_model)` -> a WeightSource,
    headers only) match the config's shapes, and the model fits in memory. Returns the source."""
    from optimizer.models.streamed import check_weights

    model = meta_model(config, trust_remote_code)
    weights = open_weights(model)
    check_weights(model, weights, arch)
    check_fits(model, "the model")
    return weights


def check_tokenizer(tokenizer: Any, vocab_size: int) -> None:
    """A tokenizer whose ids run past the model's vocabulary would index past the embedding."""
    if tokenizer is not None and len(tokenizer) > vocab_size:
        raise InputError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {vocab_size}",
                         hint="use the tokenizer the model was trained with (its vocabulary must fit vocab_size)")
