"""The engine's onnxruntime session and its KV-cache interface (concat layout).

`DecoderSession.forward` runs one step for a batch: the new tokens, the attention mask over
past + new tokens, their positions and the past cache; it returns logits and the new cache.
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

    @classmethod
    def from_manifest(cls, kv: dict[str, Any]) -> "KvSpec":
        if kv.get("layout") != "concat":
            raise EngineError(f"KV-cache layout {kv.get('layout')!r} is not supported by this runtime",
                              hint="rebuild the engine with the default (concat) layout")
        return cls(kv["num_layers"], kv["num_kv_heads"], kv["head_dim"], kv["dtype"],
                   kv["past_key"], kv["past_value"], kv["present_key"], kv["present_value"])


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

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
                past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """(B, S) ids, (B, T) mask, (B, S) positions, cache -> logits (B, S, V), new cache."""
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
