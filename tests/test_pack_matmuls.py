"""pack-qkv / pack-gate-up: sibling projections reading one input become one MatMul or
MatMulNBits (codes, scales and zero points concatenated along N) and the same outputs."""

from __future__ import annotations

import pytest

from calibration import quant_config, quantize_model
from passes import PassContext
from tests.pass_helpers import apply, assert_same_outputs, captured, counts, feeds, run
from optimizer.capture import capture
from optimizer.quantized import plain_weights


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
    result = quantize_model(loaded, quant_config(method="rtn", bits=4, group_size=32, symmetric=symmetric))
    model = capture(loaded)
    ctx = PassContext(codes=plain_weights(result.codes), max_positions=64)
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


def test_cuda_fp8_projections_packed(tiny_hf_folders):
    """FP8 linears lowered for the CUDA kernel: q/k/v (one shared activation scale) and
    gate/up pack into one MatMulBlockQuantizedFp8Weight each, rows and row scales
    concatenated, the shared scale kept; o/down stay alone."""
    import numpy as np

    from passes.lower_quantized_matmul import FP8_WEIGHT_OP

    model, loaded = captured(tiny_hf_folders["llama"])
    result = quantize_model(loaded, quant_config(method="fp8", bits=8, group_size=None, calib="tiny:4x32", batch_size=4), quiet=True)
    ctx = PassContext(codes=plain_weights(result.codes), max_positions=64, dtype="fp16", weight_format="cuda")
    model, _ = apply(capture(loaded, "fp16"), ["lower-quantized-matmul"], ctx)
    op = "com.microsoft::" + FP8_WEIGHT_OP
    layers = loaded.config.num_hidden_layers
    assert counts(model)[op] == 7 * layers
    q_proj = next(n for n in model.graph
                  if n.op_type == FP8_WEIGHT_OP and n.inputs[1].name == "model.layers.0.self_attn.q_proj.qweight")
    a_scale = q_proj.inputs[3].const_value.numpy()
    model, [qkv, gate_up] = apply(model, ["pack-qkv", "pack-gate-up"], ctx)
    assert qkv["changed"] and gate_up["changed"]
    assert counts(model)[op] == 4 * layers
    packed = next(n for n in model.graph if n.op_type == FP8_WEIGHT_OP and "q_proj+k_proj+v_proj" in n.name)
    rows = sum(result.codes[f"model.layers.0.self_attn.{p}_proj"].weight.shape[0] for p in "qkv")
    assert packed.inputs[1].const_value.shape[0] == rows
    assert packed.inputs[2].const_value.shape == (rows, 1)
    assert np.array_equal(packed.inputs[3].const_value.numpy(), a_scale)
