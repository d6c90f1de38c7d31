"""Capture a decoder as an ONNX graph (onnx_ir) with explicit KV-cache inputs and outputs.

One graph serves prefill and decode:

    inputs   input_ids (B, S) int64, attention_mask (B, T) int64 (1 = real token, T = past + S),
             position_ids (B, S) int64, past_key_values.{i}.key / .value (B, n_kv, T - S, hd)
    outputs  logits (B, S, V) float32, present.{i}.key / .value (B, n_kv, T, hd)

The graph is written from the architecture spec (`optimizer.core.architectures`) and the
module's weights, not traced: the same model gives the same graph under every torch /
transformers version we support, in seconds rather than minutes, and the passes see one
stable, documented pattern per block (see `optimizer/blocks.py`). Correctness is checked
against the torch module itself, at build time (`optimizer.verify`) and in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np
import onnx_ir as ir

from optimizer import blocks
from optimizer.core.errors import UnsupportedModelError
from optimizer.graph import GraphBuilder, input_value
from optimizer.core.architectures import ArchSpec, output_tied
from optimizer.models.loader import LoadedModel
from optimizer.models.weight_source import ModuleSource

DTYPES: dict[str, tuple[ir.DataType, type]] = {
    "fp32": (ir.DataType.FLOAT, np.float32),
    "fp16": (ir.DataType.FLOAT16, np.float16),
}
_UNSUPPORTED_ROPE = ("dynamic", "longrope")


@dataclass(frozen=True)
class DecoderDims:
    """The shape facts capture needs, derived from a transformers config."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    activation: str
    attention_scale: float
    windows: tuple[int | None, ...]  # per layer: sliding window size, or None for global
    rope_kinds: tuple[str, ...]  # per layer: key into the rope tables
    final_logit_softcap: float | None
    attn_logit_softcap: float | None


def decoder_dims(config: Any, arch: ArchSpec) -> DecoderDims:
    n_layers = config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layer_types = list(getattr(config, "layer_types", None) or ["full_attention"] * n_layers)
    window = getattr(config, "sliding_window", None)
    if arch.window_source == "all_layers":
        windows = [window] * n_layers
    else:
        windows = [window if t == "sliding_attention" else None for t in layer_types]
    scale_base = getattr(config, arch.attention_scale_attr) if arch.attention_scale_attr else head_dim
    activation = getattr(config, arch.activation_attr)
    if activation not in blocks.ACTIVATIONS:
        raise UnsupportedModelError(f"unsupported MLP activation {activation!r}",
                                    hint="supported: " + ", ".join(sorted(blocks.ACTIVATIONS)))
    return DecoderDims(
        num_layers=n_layers, hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads, num_kv_heads=config.num_key_value_heads,
        head_dim=head_dim, vocab_size=config.vocab_size, rms_norm_eps=float(config.rms_norm_eps),
        activation=activation, attention_scale=float(scale_base) ** -0.5,
        windows=tuple(windows), rope_kinds=tuple(layer_types),
        final_logit_softcap=getattr(config, "final_logit_softcapping", None),
        attn_logit_softcap=getattr(config, "attn_logit_softcapping", None),
    )


def rope_tables(model: Any, kinds: set[str]) -> dict[str, tuple[np.ndarray, float]]:
    """inv_freq (hd/2,) and attention scaling per layer kind, read from the HF rotary module.

    The module already applied the config's RoPE scaling (llama3, linear, yarn), so reading
    its buffers keeps us exact for every static rope type transformers implements.
    """
    rotary = model.model.rotary_emb
    rope_type = getattr(rotary, "rope_type", "default")
    types = set(rope_type.values()) if isinstance(rope_type, dict) else {rope_type}
    bad = types & set(_UNSUPPORTED_ROPE)
    if bad:
        raise UnsupportedModelError(f"RoPE type {sorted(bad)[0]!r} changes with sequence length",
                                    hint="supported rope types: default, linear, llama3, yarn")
    tables = {}
    for kind in kinds:
        prefix = f"{kind}_" if hasattr(rotary, f"{kind}_inv_freq") else ""
        inv_freq = getattr(rotary, f"{prefix}inv_freq").detach().float().cpu().numpy()
        tables[kind] = (inv_freq, float(getattr(rotary, f"{prefix}attention_scaling", 1.0)))
    return tables


def kv_names(i: int) -> tuple[str, str, str, str]:
    """(past key, past value, present key, present value) names of layer i."""
    return (f"past_key_values.{i}.key", f"past_key_values.{i}.value",
            f"present.{i}.key", f"present.{i}.value")


def capture(loaded: LoadedModel, dtype: str = "fp32",
            on_layer: Callable[[int], None] | None = None) -> ir.Model:
    """Write the decoder of `loaded` as an onnx_ir model in `dtype` ("fp32" or "fp16")."""
    arch, dims = loaded.arch, decoder_dims(loaded.config, loaded.arch)
    ir_dtype, np_dtype = DTYPES[dtype]
    w = _WeightReader(loaded, np_dtype)
    b = GraphBuilder()
    ctx = blocks.Context(b=b, dims=dims, arch=arch, dtype=ir_dtype, np_dtype=np_dtype)

    kv_shape = ["batch", dims.num_kv_heads, "past_sequence", dims.head_dim]
    input_ids = input_value("input_ids", ir.DataType.INT64, ["batch", "sequence"])
    attention_mask = input_value("attention_mask", ir.DataType.INT64, ["batch", "total_sequence"])
    position_ids = input_value("position_ids", ir.DataType.INT64, ["batch", "sequence"])
    pasts = [(input_value(kv_names(i)[0], ir_dtype, kv_shape),
              input_value(kv_names(i)[1], ir_dtype, kv_shape)) for i in range(dims.num_layers)]

    with b.scope("prologue"):
        masks = blocks.attention_masks(ctx, input_ids, attention_mask, set(dims.windows))
        ropes = {kind: blocks.rotary_tables(ctx, position_ids, inv_freq, scaling)
                 for kind, (inv_freq, scaling) in rope_tables(loaded.model, set(dims.rope_kinds)).items()}
        x = blocks.embed(ctx, input_ids, w.matrix(arch.embed))

    outputs = []
    for i in range(dims.num_layers):
        with b.scope(f"layers.{i}"):
            layer = _LayerWeights(w, arch, i)
            x, present_k, present_v = blocks.decoder_layer(
                ctx, x, layer, pasts[i], masks[dims.windows[i]], ropes[dims.rope_kinds[i]])
        for value, name in ((present_k, kv_names(i)[2]), (present_v, kv_names(i)[3])):
            _name_output(value, name, ir_dtype, ["batch", dims.num_kv_heads, "total_sequence", dims.head_dim])
            outputs.append(value)
        if on_layer is not None:
            on_layer(i)

    with b.scope("epilogue"):
        x = blocks.rms_norm(ctx, x, w.array(arch.final_norm, np.float32), "final_norm")
        logits = blocks.lm_head(ctx, x, w.lm_head(arch))
    _name_output(logits, "logits", ir.DataType.FLOAT, ["batch", "sequence", dims.vocab_size])

    inputs = [input_ids, attention_mask, position_ids] + [v for pair in pasts for v in pair]
    return b.model(inputs, [logits] + outputs)


def _name_output(value: ir.Value, name: str, dtype: ir.DataType, shape: list) -> None:
    value.name = name
    value.type = ir.TensorType(dtype)
    value.shape = ir.Shape(shape)


class _WeightReader:
    """The model's tensors as initializer contents in the engine dtype (norm weights stay
    fp32): numpy arrays from a model in memory; for a streamed model (weights on disk), the
    large ones (linears, embedding, lm_head) as `ir.LazyTensor`s read when the engine file is
    written (or never, where a pass replaces them: quantized linears)."""

    def __init__(self, loaded: LoadedModel, np_dtype: type) -> None:
        self.loaded, self.np_dtype = loaded, np_dtype
        self.source = loaded.weights if loaded.streamed else ModuleSource(loaded.model)

    def has(self, name: str) -> bool:
        return self.source.has(name)

    def array(self, name: str, dtype: type | None = None) -> np.ndarray:
        if not self.source.has(name):
            raise UnsupportedModelError(f"the model has no weight {name!r}",
                                        hint="the checkpoint does not match its declared architecture")
        return self.source.tensor(name).numpy().astype(dtype or self.np_dtype, copy=False)

    def matrix(self, name: str, transpose: bool = False) -> np.ndarray | ir.LazyTensor:
        """A 2-D weight in the engine dtype, (in, out) with `transpose`."""
        if not self.loaded.streamed:
            array = self.array(name)
            return np.ascontiguousarray(array.T) if transpose else array
        shape = self.source.shape(name)
        if transpose:
            shape = shape[::-1]
        read = partial(_read_matrix, self.source, name, self.np_dtype, transpose)
        return ir.LazyTensor(read, ir.DataType.from_numpy(np.dtype(self.np_dtype)), ir.Shape(shape), name=name)

    def lm_head(self, arch: ArchSpec) -> tuple[str, np.ndarray | ir.LazyTensor, bool]:
        """(name, weight (H, V), tied): tied when lm_head reads the embedding table."""
        if self.loaded.streamed:
            tied = output_tied(self.loaded.config)
        else:
            tied = not self.source.has(arch.lm_head) or self.source.same_storage(arch.lm_head, arch.embed)
        name = arch.embed if tied else arch.lm_head
        return name, (None if tied else self.matrix(name, transpose=True)), tied


def _read_matrix(source: Any, name: str, np_dtype: type, transpose: bool) -> ir.Tensor:
    array = source.tensor(name).numpy().astype(np_dtype, copy=False)
    return ir.tensor(np.ascontiguousarray(array.T) if transpose else array, name=name)


class _LayerWeights:
    """Named access to one decoder layer's weights: `lw.linear("q")` -> (module name, W^T (in, out), bias)."""

    _ROLES = {"q": 0, "k": 1, "v": 2, "o": 3}
    _MLP = {"gate": 0, "up": 1, "down": 2}

    def __init__(self, w: _WeightReader, arch: ArchSpec, i: int) -> None:
        self.w, self.arch, self.prefix = w, arch, arch.layer_prefix.format(i=i)

    def module_name(self, role: str) -> str:
        if role in self._ROLES:
            return self.prefix + self.arch.attn_proj[self._ROLES[role]]
        return self.prefix + self.arch.mlp_proj[self._MLP[role]]

    def linear(self, role: str) -> tuple[str, np.ndarray | ir.LazyTensor, np.ndarray | None]:
        name = self.module_name(role)
        weight_t = self.w.matrix(name + ".weight", transpose=True)  # (in, out)
        bias = self.w.array(name + ".bias") if self.w.has(name + ".bias") else None
        return name, weight_t, bias

    def norm(self, norm_name: str) -> np.ndarray:
        return self.w.array(self.prefix + norm_name + ".weight", np.float32)
