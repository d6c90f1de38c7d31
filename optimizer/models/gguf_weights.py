"""A GGUF file's weights into a transformers model: memory-mapped tensors (gguf_tensors.py),
dequantized one at a time by the `gguf` package (numpy), renamed by gguf's own tensor-name table.

transformers' GGUF loader does the same work with more around it (it re-reads every metadata
field, builds the name table once per module); this module is the part `optimizer.models.loader`
needs for the architectures it supports. llama.cpp's converter changes two things that must be
undone here (the same rules transformers applies):

- llama / mistral: the rows of q and k are permuted from HF's rotate-half order to interleaved
  pairs; `unpermute_rows` restores them;
- gemma3: RMSNorm weights are stored as 1 + w (Gemma's norm multiplies by 1 + w); subtract 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from optimizer.core.errors import InputError
from optimizer.models.gguf_tensors import read_tensors


def unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation: per head, rows (pair, half) -> (half, pair)."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def fix_tensor(arch: str, name: str, w: np.ndarray, config: Any) -> np.ndarray:
    """The HF value of GGUF tensor `name` of architecture `arch` (pure: returns a new array
    where it changes anything)."""
    if arch in ("llama", "mistral"):
        if ".attn_q." in name:
            return unpermute_rows(w, config.num_attention_heads)
        if ".attn_k." in name:
            return unpermute_rows(w, config.num_key_value_heads)
    if arch == "gemma3" and "norm.weight" in name:
        return w - 1
    return w


def hf_names(model: torch.nn.Module, arch: str, layers: int) -> dict[str, str]:
    """GGUF tensor name -> the model's parameter name, by gguf's tensor-name table."""
    import gguf

    arch_id = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), None)
    if arch_id is None:
        raise InputError(f"the gguf package does not know the architecture {arch!r}")
    table = gguf.get_tensor_name_map(arch_id, layers)
    names = {}
    for hf_name in model.state_dict():
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = table.get_name(base)
        if gguf_name is not None:
            names[f"{gguf_name}.{suffix}"] = hf_name
    return names


def empty_model(config: Any) -> torch.nn.Module:
    """The model class of `config` with its parameters allocated but not initialized (they are
    all assigned from the file; buffers such as the rotary frequencies are computed as usual)."""
    from transformers import AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialize (slower, same result once assigned)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with no_init_weights():
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def load_gguf_model(path: Path, config: Any) -> torch.nn.Module:
    """The model of `config` holding the fp32 weights of the GGUF file at `path`. Every
    parameter must come from the file (a tied output projection comes from the embedding)."""
    from gguf import dequantize

    arch = gguf_arch(config)
    model = empty_model(config)
    names = hf_names(model, arch, config.num_hidden_layers)
    state = {}
    for tensor in read_tensors(path):
        hf_name = names.get(tensor.name)
        if hf_name is None:
            continue  # e.g. llama.cpp's precomputed rope_freqs: the model computes its own
        w = fix_tensor(arch, tensor.name, dequantize(tensor.data, tensor.tensor_type), config)
        w = np.ascontiguousarray(w, dtype=np.float32)
        if not w.flags.writeable:  # an F32 tensor is a view of the read-only mapped file
            w = w.copy()
        state[hf_name] = torch.from_numpy(w)
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = set(result.missing_keys)
    if getattr(config, "tie_word_embeddings", False):
        missing -= {k for k in missing if k.startswith("lm_head.")}
    if missing:
        raise InputError(f"the GGUF file lacks {len(missing)} of the model's tensors, e.g. {sorted(missing)[0]}",
                         hint="check that the file is a complete model of a supported architecture")
    model.tie_weights()
    return model


def gguf_arch(config: Any) -> str:
    return "gemma3" if config.model_type in ("gemma3", "gemma3_text") else config.model_type


class GgufSource:
    """A GGUF file's tensors under the model's parameter names, each dequantized (and undone
    as `fix_tensor` says) to float32 when asked for: the streaming build's view of the file
    (optimizer.models.weight_source.WeightSource)."""

    def __init__(self, path: Path, config: Any, model: torch.nn.Module) -> None:
        self.config, self.arch = config, gguf_arch(config)
        tensors = {t.name: t for t in read_tensors(path)}
        names = hf_names(model, self.arch, config.num_hidden_layers)
        self._tensors = {hf: tensors[g] for g, hf in names.items() if g in tensors}

    def names(self):
        return self._tensors.keys()

    def has(self, name: str) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return self._tensor(name).shape

    def tensor(self, name: str, rows: slice | None = None) -> torch.Tensor:
        from gguf import dequantize

        t = self._tensor(name)
        w = fix_tensor(self.arch, t.name, dequantize(t.data, t.tensor_type), self.config)
        w = np.array(w if rows is None else w[rows], dtype=np.float32)  # a copy: never the mapped file
        return torch.from_numpy(w)

    def _tensor(self, name: str):
        t = self._tensors.get(name)
        if t is None:
            raise InputError(f"the GGUF file has no tensor for {name!r}",
                             hint="check that the file is a complete model of a supported architecture")
        return t
