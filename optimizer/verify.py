"""Build-time check that the engine computes what the torch module computes.

A short probe sequence runs through both: the torch module over the whole sequence, the
engine as a prefill followed by decode steps through its KV cache. The largest logit
difference and the top-1 agreement go into the manifest; an fp32 engine that disagrees
beyond numerical noise fails the build (nothing is written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from optimizer.core.errors import OptimizerError
from optimizer.models.loader import LoadedModel
from runtime.executors import probe_logits
from optimizer.core.engine_format import KvCacheSpec
from runtime.session import DecoderSession

PROBE_TEXT = "The quick brown fox jumps over the lazy dog. Paris is the capital of"
DECODE_STEPS = 3
# Relative to the largest reference logit: fp32 engines agree to ~1e-6 in practice.
FP32_TOLERANCE = 1e-3


class VerificationError(OptimizerError):
    exit_code = 3


def probe_ids(loaded: LoadedModel, length: int = 16) -> list[int]:
    if loaded.tokenizer is not None:
        ids = list(loaded.tokenizer(PROBE_TEXT).input_ids)[:length]
        if len(ids) > DECODE_STEPS:
            return ids
    rng = np.random.default_rng(0)
    return rng.integers(0, loaded.config.vocab_size, size=length).tolist()


def reference_logits(model: Any, ids: list[int]) -> np.ndarray:
    """The torch module's logits (N, V) over the probe sequence."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def verify_engine(model_path: Path, kv: KvCacheSpec, loaded: LoadedModel, mode: str,
                  provider: str = "cpu", quantization: dict[str, Any] | None = None,
                  reference: np.ndarray | None = None, custom_ops: tuple[str, ...] = ()) -> dict[str, Any]:
    """mode "fp32": the engine must match to numerical noise; "approx" (fp16 compute, int8
    activations): the figures are recorded and only non-finite logits fail. The engine is held
    to `loaded.model`'s logits on `probe_ids(loaded)`, or to `reference`, those logits computed
    beforehand (a streamed build's, layer by layer, released before the engine loads)."""
    ids = probe_ids(loaded)
    ref = reference_logits(loaded.model, ids) if reference is None else reference
    session = DecoderSession(model_path, kv, provider=provider, quantization=quantization,
                             huge_pages=False, custom_ops=custom_ops)  # a probe: speed is no matter
    got = probe_logits(session, ids, len(ids) - DECODE_STEPS)
    finite = bool(np.isfinite(got).all())
    max_diff = float(np.abs(got - ref).max()) if finite else float("inf")
    scale = float(np.abs(ref).max())
    report = {
        "probe_tokens": len(ids),
        "decode_steps": DECODE_STEPS,
        "max_abs_logit_diff": max_diff,
        "max_abs_reference_logit": scale,
        "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).mean()),
    }
    if not finite:
        raise VerificationError("the engine produced non-finite logits on the probe sequence",
                                hint="try --dtype fp32; fp16 may overflow for this model")
    if mode == "fp32" and max_diff > FP32_TOLERANCE * max(1.0, scale):
        raise VerificationError(
            f"the engine's logits differ from the torch model's by {max_diff:.3g} "
            f"(limit {FP32_TOLERANCE * max(1.0, scale):.3g})",
            hint="this is a bug for this model: rebuild with --passes unfused to tell capture from the "
                 "fusion passes, and please report it with the model's config")
    return report
