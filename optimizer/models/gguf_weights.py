"""A GGUF file's weights into a transformers model: memory-mapped tensors (gguf_tensors.py),
dequantized one at a time by the `gguf` package's numpy code (`dequantized`: its per-type row
function over large runs of rows), renamed by gguf's own tensor-name table.

transformers' GGUF loader does the same work with more around it (it re-reads every metadata
field, builds the name table once per module); this module is the part `optimizer.models.loader`
needs for the architectures it supports. llama.cpp's converter changes two things that must be
undone here (the same rules transformers applies):

- llama / mistral: the rows of q and k are permuted from HF's rotate-half order to interleaved
  pairs; `unpermute_rows` restores them;
- gemma3: RMSNorm weights are stored as 1 + w (Gemma's norm multiplies by 1 + w); subtract 1.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from optimizer.core.errors import InputError
from optimizer.models.gguf_tensors import GgufTensor

# values dequantized per call: few enough that the temporaries (a float32 copy or three of the
# chunk) stay at ~128 KB, which glibc serves from its heap; at 512 KB and up each one is a fresh
# mmap whose pages fault in again (SmolLM2: 385k page faults and 0.75 s of system time at 128k
# values a call, 105k and 0.25 s, the output's own, at 32k)
CHUNK_VALUES = 1 << 15


def dequantized(tensor: GgufTensor) -> np.ndarray:
    """The float32 values of `tensor` (a new, writable array; never a view of the file).

    `gguf.dequantize` runs its per-type row function over groups of 16 rows (~9k values for
    SmolLM2's 576-wide rows) and concatenates the groups; the same row function over runs of
    ~32k values, written into the output in place, gives the same values (each block is
    dequantized on its own; tests/test_gguf_loading.py compares every tensor of the packaged
    files bit for bit) with less Python and numpy call overhead: SmolLM2's 272 tensors in
    0.55-0.60 s against 0.82-1.08 s (fresh processes, 2-core machine)."""
    import gguf
    from gguf import GGMLQuantizationType

    qtype = GGMLQuantizationType(tensor.tensor_type)
    kind = getattr(gguf.quants, qtype.name, None)  # the block formats' classes are named after them
    if getattr(kind, "qtype", None) != qtype:  # F32 / F16 (and any type without a class): gguf's own
        return np.array(gguf.dequantize(tensor.data, qtype), dtype=np.float32)
    kind.init_grid()  # the i-quants' lookup grids, built once (what gguf.dequantize does first)
    rows = tensor.data.reshape(-1, tensor.data.shape[-1])  # (rows, bytes a row)
    out = np.empty((rows.shape[0], tensor.shape[-1]), dtype=np.float32)
    step = max(1, CHUNK_VALUES // tensor.shape[-1])
    for start in range(0, rows.shape[0], step):
        out[start:start + step] = kind.dequantize_rows(rows[start:start + step])
    return out.reshape(tensor.shape)


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


@contextmanager
def small_pages() -> Iterator[None]:
    """numpy without its request for 2 MiB pages for the duration (single-threaded use: the
    setting is the process's).

    numpy asks the kernel for transparent huge pages for every array of 4 MiB and more
    (madvise(MADV_HUGEPAGE)). Where THP's defrag setting is "madvise" (this machine's, and a
    common default), each fault in such an array may first compact memory synchronously: the
    dequantized weights of Gemma-3-270M (1.1 GB) took 4.4-6.9 s of system time that way against
    0.5-0.7 s in 4 KiB pages, SmolLM2's 0.26-1.1 s against 0.32-0.36 s (three fresh processes
    each, 2-core machine). Elsewhere (defrag "never" or "defer") it changes little."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _set_madvise_hugepage
    previous = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(previous)


def load_gguf_model(source: "GgufSource", config: Any) -> torch.nn.Module:
    """The model of `config` holding the fp32 weights of `source` (the GGUF file opened, and
    checked against `config`, by the loader's preflight). Every parameter must come from the
    file (a tied output projection comes from the embedding)."""
    model = empty_model(config)
    with small_pages():  # each tensor dequantized once, no copy after
        state = {name: source.tensor(name) for name in source.names()}
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
    """A GGUF file's tensors under the model's parameter names (those of `model`, a skeleton of
    the config's model on the meta device), each dequantized (and undone as `fix_tensor` says)
    to float32 when asked for: the preflight's, the in-memory load's and the streaming build's
    view of the file (optimizer.models.weight_source.WeightSource). Tensors the model has no
    parameter for (llama.cpp's precomputed rope_freqs: the model computes its own) are left out."""

    def __init__(self, tensors: list[GgufTensor], config: Any, model: torch.nn.Module) -> None:
        self.config, self.arch = config, gguf_arch(config)
        by_name = {t.name: t for t in tensors}  # read_tensors(path): the file's, memory-mapped
        names = hf_names(model, self.arch, config.num_hidden_layers)
        self._tensors = {hf: by_name[g] for g, hf in names.items() if g in by_name}

    def names(self):
        return self._tensors.keys()

    def has(self, name: str) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return self._tensor(name).shape

    def tensor(self, name: str, rows: slice | None = None) -> torch.Tensor:
        t = self._tensor(name)
        w = fix_tensor(self.arch, t.name, dequantized(t), self.config)
        # rows: a copy of them, so that the whole tensor is freed
        return torch.from_numpy(np.ascontiguousarray(w) if rows is None else np.array(w[rows]))

    def _tensor(self, name: str):
        t = self._tensors.get(name)
        if t is None:
            raise InputError(f"the GGUF file has no tensor for {name!r}",
                             hint="check that the file is a complete model of a supported architecture")
        return t
