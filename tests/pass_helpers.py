"""Shared by the pass tests: capture a tiny model, run a graph in onnxruntime, apply passes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from optimizer.capture import capture, decoder_dims
from optimizer.models.loader import load_model
from passes import PassContext
from passes.pipeline import op_counts, run_passes


def captured(folder, dtype: str = "fp32") -> tuple[ir.Model, object]:
    loaded = load_model(str(folder), quiet=True)
    return capture(loaded, dtype), loaded


def feeds(loaded, batch: int = 2, new: int = 4, past: int = 3, dtype=np.float32, seed: int = 0) -> dict:
    """A batch without padding: `past` cached positions (random K/V) and `new` new tokens."""
    d = decoder_dims(loaded.config, loaded.arch)
    rng = np.random.default_rng(seed)
    out = {"input_ids": rng.integers(0, d.vocab_size, (batch, new)).astype(np.int64),
           "attention_mask": np.ones((batch, past + new), np.int64),
           "position_ids": np.tile(np.arange(past, past + new), (batch, 1)).astype(np.int64),
           "logits_from": np.zeros(1, np.int64)}  # after slice-logits: every position's logits
    for i in range(d.num_layers):
        for kind in ("key", "value"):
            out[f"past_key_values.{i}.{kind}"] = rng.standard_normal(
                (batch, d.num_kv_heads, past, d.head_dim)).astype(dtype)
    return out


def run(model: ir.Model, inputs: dict) -> dict[str, np.ndarray]:
    proto = ir.to_proto(model).SerializeToString()
    session = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    outputs = session.run(None, {k: v for k, v in inputs.items() if k in names})
    return dict(zip([o.name for o in session.get_outputs()], outputs))


def apply(model: ir.Model, names, ctx: PassContext | None = None) -> tuple[ir.Model, list[dict]]:
    return run_passes(model, list(names), ctx or PassContext(max_positions=64))


def counts(model: ir.Model) -> Counter:
    return op_counts(model)


def assert_same_outputs(before: dict, after: dict, atol: float = 1e-4) -> None:
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].shape == after[name].shape, name
        np.testing.assert_allclose(after[name], before[name], atol=atol, rtol=1e-4, err_msg=name)
