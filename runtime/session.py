"""The engine's onnxruntime session and its KV-cache interface.

`DecoderSession.forward` runs one step for a batch: the new tokens, the attention mask over
past + new tokens, their positions and the past cache; it returns logits and the new cache.

Two cache forms, same step function:
- concat (any engine): numpy arrays; past (B, n_kv, P, hd) in, present (B, n_kv, P+S, hd) out.
- static (engines whose attention is GroupQueryAttention): one preallocated (B, n_kv, C, hd)
  buffer per layer and K/V, bound through IO binding as both past and present, so the kernel
  writes each step's keys and values in place and nothing is copied between steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from optimizer.errors import EngineError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_NP_DTYPES = {"fp32": np.float32, "fp16": np.float16}


@dataclass(frozen=True)
class KvSpec:
    """The cache interface recorded in the manifest's `kv_cache` section."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    past_key: str  # name pattern with {i}
    past_value: str
    present_key: str
    present_value: str
    attention: str = "unfused"  # or "GroupQueryAttention": right padding, in-place cache possible
    max_sequence_length: int | None = None  # fused engines: the rotary caches' length

    @classmethod
    def from_manifest(cls, kv: dict[str, Any]) -> "KvSpec":
        if kv.get("layout") != "concat":
            raise EngineError(f"KV-cache layout {kv.get('layout')!r} is not supported by this runtime",
                              hint="rebuild the engine with the default (concat) layout")
        return cls(kv["num_layers"], kv["num_kv_heads"], kv["head_dim"], kv["dtype"],
                   kv["past_key"], kv["past_value"], kv["present_key"], kv["present_value"],
                   kv.get("attention", "unfused"), kv.get("max_sequence_length"))


def make_session_options(threads: int | None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return opts


def resolve_provider(provider: str) -> str:
    name = PROVIDERS.get(provider.lower(), provider)
    available = ort.get_available_providers()
    if name not in available:
        short = [k for k, v in PROVIDERS.items() if v in available]
        raise EngineError(f"execution provider {provider!r} is not available in this onnxruntime",
                          hint=f"available here: {', '.join(short or available)}; "
                               "for cuda install onnxruntime-gpu")
    return name


class DecoderSession:
    def __init__(self, model_path: Path, kv: KvSpec, provider: str = "cpu",
                 threads: int | None = None) -> None:
        self.kv = kv
        self.provider = resolve_provider(provider)
        if self.provider != PROVIDERS["cpu"] and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN libraries from the pip-installed nvidia packages
        self.session = ort.InferenceSession(str(model_path), make_session_options(threads),
                                            providers=[self.provider])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._np_dtype = _NP_DTYPES[kv.dtype]

    def empty_cache(self, batch: int) -> list[np.ndarray]:
        """Zero-length past for a prefill: [k0, v0, k1, v1, ...], each (B, n_kv, 0, hd)."""
        empty = np.zeros((batch, self.kv.num_kv_heads, 0, self.kv.head_dim), self._np_dtype)
        return [empty] * (2 * self.kv.num_layers)

    def new_cache(self, batch: int, capacity: int) -> "list[np.ndarray] | StaticCache":
        """The fastest cache this engine supports for sequences up to `capacity` tokens."""
        limit = self.kv.max_sequence_length
        if limit is not None and capacity > limit:
            raise EngineError(f"{capacity} tokens exceed the engine's maximum sequence length {limit}",
                              hint="shorten the prompt or max_new_tokens, or rebuild with a larger --max-seq-len")
        if self.kv.attention == "GroupQueryAttention":
            return StaticCache(self, batch, capacity)
        return self.empty_cache(batch)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
                past: "list[np.ndarray] | StaticCache") -> tuple[np.ndarray, "list[np.ndarray] | StaticCache"]:
        """(B, S) ids, (B, T) mask, (B, S) positions, cache -> logits (B, S, V), new cache."""
        if isinstance(past, StaticCache):
            return past.step(input_ids, attention_mask, position_ids), past
        feeds = {"input_ids": input_ids.astype(np.int64, copy=False),
                 "attention_mask": attention_mask.astype(np.int64, copy=False),
                 "position_ids": position_ids.astype(np.int64, copy=False)}
        for i in range(self.kv.num_layers):
            feeds[self.kv.past_key.format(i=i)] = past[2 * i]
            feeds[self.kv.past_value.format(i=i)] = past[2 * i + 1]
        outputs = dict(zip(self.output_names, self.session.run(None, feeds)))
        present = []
        for i in range(self.kv.num_layers):
            present += [outputs[self.kv.present_key.format(i=i)], outputs[self.kv.present_value.format(i=i)]]
        return outputs["logits"], present


class StaticCache:
    """Per-layer K/V buffers of `capacity` positions, bound as past and present of a
    GroupQueryAttention engine (the kernel's shared-buffer mode): each step writes its new
    keys/values in place. Only ids, mask and positions are bound per step; logits come back."""

    def __init__(self, owner: DecoderSession, batch: int, capacity: int) -> None:
        kv = owner.kv
        self.session = owner.session
        self.capacity = capacity
        device = "cuda" if owner.provider == PROVIDERS["cuda"] else "cpu"
        self._device = device
        shape = (batch, kv.num_kv_heads, capacity, kv.head_dim)
        self.binding = self.session.io_binding()
        self.binding.bind_output("logits", device)  # first: get_outputs() lists in binding order
        self.buffers = []
        for i in range(kv.num_layers):
            for past, present in ((kv.past_key, kv.present_key), (kv.past_value, kv.present_value)):
                buf = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, owner._np_dtype), device, 0)
                self.binding.bind_ortvalue_input(past.format(i=i), buf)
                self.binding.bind_ortvalue_output(present.format(i=i), buf)
                self.buffers.append(buf)
        self._inputs = {i.name for i in self.session.get_inputs()}

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        if attention_mask.shape[1] > self.capacity:
            raise EngineError(f"the sequence outgrew its cache ({self.capacity} positions)",
                              hint="allocate the cache for prompt + max_new_tokens")
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        for name, value in feeds.items():
            if name in self._inputs:
                self.binding.bind_cpu_input(name, np.ascontiguousarray(value, dtype=np.int64))
        self.binding.bind_output("logits", self._device)  # a fresh logits tensor each step
        self.session.run_with_iobinding(self.binding)
        return self.binding.get_outputs()[0].numpy()
