"""GPTQ's per-layer step: each linear rounded against the Hessian of its calibration inputs."""

from __future__ import annotations

from typing import Any

from calibration.config import GptqConfig
from calibration.gptq import HessianAccumulator, gptq_quantize
from calibration.methods.hooks import observe_shared_inputs, store_quantized
from calibration.rtn import QuantizedLinear
from calibration.sequential import LayerWork


def gptq_layer(work: LayerWork, cfg: GptqConfig, codes: dict[str, QuantizedLinear], arch: Any = None) -> None:
    hessians = observe_shared_inputs(work, lambda role: HessianAccumulator(work.linears[role].in_features),
                                     lambda acc, x: acc.add(x))
    for role, linear in work.linears.items():
        q = gptq_quantize(linear.weight, hessians[role].H, cfg.spec, act_order=cfg.act_order, damp=cfg.damp)
        store_quantized(linear, q, work.names[role], codes)
