"""Calibration and weight quantization on the torch module, layer by layer.

    result = quantize_model(loaded, quant_config(method="gptq", bits=4, group_size=64))
    result.codes["model.layers.0.self_attn.q_proj"]  # QuantizedLinear: codes, scales, zeros
    #                                                   (Fp8Linear for method "fp8")

The package's names come from `calibration.quantize` (its docstring says how it works), loaded
on first use: a process that needs only a submodule without torch, such as the calibration
text of `calibration.data` that `optimize eval` reads, does not import torch (~1.5 s here).
"""

from __future__ import annotations

from typing import Any

API = ("ALGORITHMS", "Progress", "QuantConfig", "QuantizationResult", "calibration_device", "calibration_windows",
       "check_streamable", "quant_config", "quantize_model", "tensors_to_cpu")
__all__ = ["ALGORITHMS", "Progress", "QuantConfig", "QuantizationResult", "check_streamable", "quant_config",
           "quantize_model"]


def __getattr__(name: str) -> Any:
    if name in API:
        from calibration import quantize

        return getattr(quantize, name)
    raise AttributeError(f"module 'calibration' has no attribute {name!r}")
