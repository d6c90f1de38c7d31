"""Static scales for an int8 or fp8 KV cache: one per layer for K and one for V, from calibration text.

onnxruntime's GroupQueryAttention (int8, CPU) and PagedAttention (float8 E4M3, CUDA) store the
cache as codes of x / scale and read them back as codes * scale (`k_quant_type`/`v_quant_type`
PER_TENSOR). A scale maps the largest value the cache will hold to the format's largest
(127 for int8, 448 for E4M3):

- V is cached as v_proj computes it: scale = max|v| / 127 over every calibration token.
- K is cached after rotary embedding (and after QK-norm where the family has it). Rotary
  turns each pair of channels (i, i + head_dim/2) by a position-dependent angle, so a
  rotated value can reach sqrt(a_i^2 + a_j^2) where a_i, a_j are the pair's largest
  magnitudes before rotation: the scale uses that bound, for every position the engine will
  ever reach, not only the calibration text's.

The model is run as the engine will compute it (after weight quantization, with its
fake-quant weights), up to the last decoder layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from calibration.mappings import module_names
from calibration.sequential import run_decoder_layers
from optimizer.core.architectures import ArchSpec

INT8_MAX = 127.0
CODE_MAX = {"int8": INT8_MAX, "fp8": 448.0}  # the largest code of each cache format (E4M3: 448)


def rotary_bound(channel_absmax: torch.Tensor) -> float:
    """The largest |value| rotate-half rotary can produce from channels whose largest
    magnitudes are `channel_absmax` (head_dim,): max over pairs of sqrt(a_i^2 + a_{i+half}^2)."""
    half = channel_absmax.shape[-1] // 2
    a, b = channel_absmax[..., :half].float(), channel_absmax[..., half:2 * half].float()
    return float(torch.sqrt(a * a + b * b).max())


def scale_of(absmax: float, code_max: float = INT8_MAX) -> float:
    return max(absmax, 1e-8) / code_max


def kv_cache_scales(model: Any, arch: ArchSpec, windows: np.ndarray, head_dim: int,
                    batch_size: int = 8, dtype: str = "int8") -> list[tuple[float, float]]:
    """(k_scale, v_scale) per decoder layer for a `dtype` cache (int8 | fp8), observed on
    `windows` (N, L) token ids."""
    code_max = CODE_MAX[dtype]
    layers = model.model.layers
    k_abs = [torch.zeros(head_dim) for _ in layers]
    v_abs = [0.0] * len(layers)

    def k_hook(i: int):
        def hook(_m, _args, out) -> None:
            k_abs[i] = torch.maximum(k_abs[i], out.detach().reshape(-1, head_dim).abs().amax(0).float())
        return hook

    def v_hook(i: int):
        def hook(_m, _args, out) -> None:
            v_abs[i] = max(v_abs[i], float(out.detach().abs().max()))
        return hook

    handles = []
    for i in range(len(layers)):
        names = module_names(arch, i)
        k_module = (arch.layer_prefix.format(i=i) + arch.qk_norm_names[1]) if arch.qk_norm else names["k"]
        handles.append(model.get_submodule(k_module).register_forward_hook(k_hook(i)))
        handles.append(model.get_submodule(names["v"]).register_forward_hook(v_hook(i)))
    try:
        with torch.no_grad():
            for start in range(0, len(windows), batch_size):
                run_decoder_layers(model, torch.from_numpy(windows[start:start + batch_size]))
    finally:
        for h in handles:
            h.remove()
    return [(scale_of(rotary_bound(k), code_max), scale_of(v, code_max)) for k, v in zip(k_abs, v_abs)]
