"""pack-qkv / pack-gate-up: sibling projections reading one input become one MatMul or
MatMulNBits (codes, scales and zero points concatenated along N) and the same outputs."""

from __future__ import annotations

import pytest

from calibration import QuantConfig, quantize_model
from passes import PassContext
from tests.pass_helpers import apply, assert_same_outputs, captured, counts, feeds, run
from optimizer.capture import capture


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma3"])
def test_float_projections_packed(name, tiny_hf_folders):
    model, loaded = captured(tiny_hf_folders[name])
    inputs = feeds(loaded)
    before = run(model, inputs)
    matmuls = counts(model)["MatMul"]
    layers = loaded.config.num_hidden_layers
    model, reports = apply(model, ["pack-qkv", "pack-gate-up"])
    assert all(r["changed"] for r in reports)
    assert counts(model)["MatMul"] == matmuls - 3 * layers  # 3 -> 1 and 2 -> 1 per layer
    assert_same_outputs(before, run(model, inputs))


@pytest.mark.parametrize("symmetric", [True, False])
def test_quantized_projections_packed_into_gqa(symmetric, tiny_hf_folders):
    model, loaded = captured(tiny_hf_folders["qwen2"])  # q/k/v biases are packed too
    result = quantize_model(loaded, QuantConfig(method="rtn", bits=4, group_size=32, symmetric=symmetric))
    model = capture(loaded)
    ctx = PassContext(codes=result.codes, max_positions=64)
    model, _ = apply(model, ["lower-quantized-matmul", "fuse-rms-norm", "fuse-attention"], ctx)
    inputs = feeds(loaded, new=1)  # a decode step (GQA: multi-token steps after a past need batch 1)
    before = run(model, inputs)
    n_before = counts(model)["com.microsoft::MatMulNBits"]
    model, [qkv, gate_up] = apply(model, ["pack-qkv", "pack-gate-up"], ctx)
    layers = loaded.config.num_hidden_layers
    assert counts(model)["com.microsoft::MatMulNBits"] == n_before - 3 * layers
    assert "packed QKV input" in qkv["notes"][0]
    for node in model.graph:
        if node.op_type == "GroupQueryAttention":
            assert node.inputs[1] is None and node.inputs[2] is None  # packed QKV
    assert_same_outputs(before, run(model, inputs))
