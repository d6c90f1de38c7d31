"""GPTQ's per-layer step: each linear rounded against the Hessian of its calibration inputs;
linears that read one tensor share its Hessian and are rounded as one stacked matrix."""

from __future__ import annotations

from typing import Any

from calibration.config import GptqConfig
from calibration.gptq import HessianAccumulator, gptq_quantize_shared
from calibration.mappings import INPUT_GROUPS
from calibration.methods.hooks import observe_shared_inputs, store_quantized
from calibration.rtn import QuantizedLinear
from calibration.sequential import LayerWork


def gptq_layer(work: LayerWork, cfg: GptqConfig, codes: dict[str, QuantizedLinear], arch: Any = None) -> None:
    hessians = observe_shared_inputs(work, lambda role: HessianAccumulator(work.linears[role].in_features),
                                     lambda acc, x: acc.add(x))
    for group in INPUT_GROUPS:
        roles = [r for r in group if r in work.linears]
        if not roles:
            continue
        qs = gptq_quantize_shared([work.linears[r].weight for r in roles], hessians[roles[0]].H, cfg.spec,
                                  act_order=cfg.act_order, damp=cfg.damp)
        for role, q in zip(roles, qs):
            store_quantized(work.linears[role], q, work.names[role], codes)
