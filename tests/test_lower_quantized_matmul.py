"""MatMulNBits lowering: onnxruntime computes exactly x @ dequant(W)^T for every bit width,
group size and symmetry; the pass replaces the MatMul and drops the float weight."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from calibration.rtn import QuantSpec, rtn_quantize
from optimizer.graph import GraphBuilder, input_value
from optimizer.quantized import plain_weight
from passes.lower_quantized_matmul import LowerQuantizedMatMul, block_size_for, pack


def _linear_model(weight_t: np.ndarray, dtype=np.float32) -> ir.Model:
    b = GraphBuilder()
    x = input_value("x", ir.DataType.from_numpy(np.dtype(dtype)), ["batch", weight_t.shape[0]])
    y = b.op("MatMul", x, b.weight("layer.proj.weight", weight_t.astype(dtype)))
    y.name, y.type, y.shape = "y", ir.TensorType(x.dtype), ir.Shape(["batch", weight_t.shape[1]])
    return b.model([x], [y])


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    proto = ir.to_proto(model).SerializeToString()
    return ort.InferenceSession(proto, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64, 128, None])
@pytest.mark.parametrize("symmetric", [True, False])
def test_matmulnbits_computes_the_fake_quant_function(bits, group, symmetric):
    torch.manual_seed(0)
    n_out, n_in = 48, 192 if group != 128 else 256
    if group is None:
        n_in = 200  # per-channel over a width no kernel block divides: padded blocks
    q = rtn_quantize(torch.randn(n_out, n_in) * 0.05, QuantSpec(bits, group, symmetric))
    deq = q.dequantize().numpy()
    model = _linear_model(np.ascontiguousarray(deq.T))
    result = LowerQuantizedMatMul({"layer.proj": plain_weight(q)}).call(model)
    assert result.modified
    ops = [n.op_type for n in result.model.graph]
    assert ops == ["MatMulNBits"]
    assert "layer.proj.weight" not in result.model.graph.initializers
    has_zp = "layer.proj.qzeros" in result.model.graph.initializers
    assert has_zp == (not symmetric)
    x = np.random.default_rng(0).standard_normal((5, n_in)).astype(np.float32)
    got = _run(result.model, x)
    assert np.allclose(got, x @ deq.T, atol=1e-4)


def test_fp16_weights_get_fp16_scales():
    q = rtn_quantize(torch.randn(32, 64) * 0.05, QuantSpec(4, 32, False))
    model = _linear_model(np.ascontiguousarray(q.dequantize().numpy().T), np.float16)
    lowered = LowerQuantizedMatMul({"layer.proj": plain_weight(q)}).call(model).model
    assert lowered.graph.initializers["layer.proj.scales"].const_value.dtype == ir.DataType.FLOAT16
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float16)
    ref = x.astype(np.float32) @ q.dequantize().numpy().T
    assert np.allclose(_run(lowered, x).astype(np.float32), ref, atol=2e-2)


def test_nothing_to_lower_reports_unmodified():
    model = _linear_model(np.ones((8, 4), np.float32))
    assert not LowerQuantizedMatMul({}).call(model).modified


def test_packing_layout():
    assert [block_size_for(576, g) for g in (32, 64)] == [32, 64]
    assert [block_size_for(k, k) for k in (576, 1536, 200)] == [64, 256, 16]  # per-channel
    q = rtn_quantize(torch.randn(2, 64), QuantSpec(4, 32, False))
    packed = pack(plain_weight(q))
    codes = q.qweight.numpy()
    assert packed.B.shape == (2, 2, 16)
    assert packed.B[0, 0, 0] == codes[0, 0] | (codes[0, 1] << 4)  # low nibble first
    assert packed.zero_points.shape == (2, 1)
    assert packed.zero_points[1, 0] == q.zeros[1, 0] | (q.zeros[1, 1] << 4)


@pytest.mark.parametrize("bits,width", [(8, 576), (8, 1536), (4, 576)])
def test_per_channel_uses_kernel_block_sizes(bits, width):
    q = rtn_quantize(torch.randn(16, width) * 0.05, QuantSpec(bits, None, False))
    packed = pack(plain_weight(q))
    assert packed.block_size in (64, 128, 256) and width % packed.block_size == 0
    assert packed.scales.shape == (16, width // packed.block_size)
    model = _linear_model(np.ascontiguousarray(q.dequantize().numpy().T))
    lowered = LowerQuantizedMatMul({"layer.proj": plain_weight(q)}).call(model).model
    x = np.random.default_rng(2).standard_normal((3, width)).astype(np.float32)
    assert np.allclose(_run(lowered, x), x @ q.dequantize().numpy().T, atol=1e-4)


def _run_qdq(model: ir.Model, x: np.ndarray) -> np.ndarray:
    from runtime.session import disabled_optimizers

    proto = ir.to_proto(model).SerializeToString()
    session = ort.InferenceSession(proto, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=list(disabled_optimizers({"method": "fp8"})))
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64, None])
@pytest.mark.parametrize("symmetric", [True, False])
def test_dequantize_format_is_standard_and_exact(bits, group, symmetric):
    """The TensorRT target's form: DequantizeLinear (blocked / per-axis) -> MatMul."""
    torch.manual_seed(1)
    q = rtn_quantize(torch.randn(48, 128) * 0.05, QuantSpec(bits, group, symmetric))
    deq = q.dequantize().numpy()
    lowered = LowerQuantizedMatMul({"layer.proj": plain_weight(q)}, weight_format="dequantize").call(
        _linear_model(np.ascontiguousarray(deq.T))).model
    assert [(n.op_type, n.domain) for n in lowered.graph] == [("DequantizeLinear", ""), ("MatMul", "")]
    dq = next(iter(lowered.graph))
    codes = lowered.graph.initializers["layer.proj.qweight"].const_value
    expected = {(4, True): ir.DataType.INT4, (4, False): ir.DataType.UINT4,
                (8, True): ir.DataType.INT8, (8, False): ir.DataType.UINT8}[bits, symmetric]
    assert codes.dtype == expected
    assert ("layer.proj.qzeros" in lowered.graph.initializers) == (not symmetric)
    assert dq.attributes.get_int("block_size", 0) == (group or 0)
    x = np.random.default_rng(0).standard_normal((5, 128)).astype(np.float32)
    # onnxruntime fuses DQ(int4) + MatMul into MatMulNBits at load: accuracy level 0 keeps fp32 math
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    got = ort.InferenceSession(ir.to_proto(lowered).SerializeToString(), opts,
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(got, x @ deq.T, atol=1e-4)


def test_fp8_lowering_quantizes_activations_and_weights():
    from calibration.fp8 import fake_quant_fp8, quantize_linear_fp8

    torch.manual_seed(2)
    w = torch.randn(24, 64) * 0.05
    q = quantize_linear_fp8(w, input_scale=0.01, observer="minmax")
    lowered = LowerQuantizedMatMul({"layer.proj": plain_weight(q)}).call(
        _linear_model(np.ascontiguousarray(q.dequantize().numpy().T))).model
    ops = [n.op_type for n in lowered.graph]
    assert sorted(ops) == ["DequantizeLinear", "DequantizeLinear", "MatMul", "QuantizeLinear"]
    assert lowered.graph.initializers["layer.proj.qweight"].const_value.dtype == ir.DataType.FLOAT8E4M3FN
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32) * 2  # some saturate
    ref = fake_quant_fp8(torch.from_numpy(x), 0.01).numpy() @ q.dequantize().numpy().T
    assert np.allclose(_run_qdq(lowered, x), ref, atol=1e-5)


def test_cuda_format_lowers_fp8_to_the_cuda_kernel_exactly():
    """--target onnxruntime-cuda: one MatMulBlockQuantizedFp8Weight per FP8 linear, whose
    arrays reproduce the fake-quant weight exactly (codes (N, K) E4M3 x one float32 scale per
    row, block = K) and carry the static activation scale. The kernel is CUDA-only: its
    numerics are checked on the GPU by the build's verification (benchmarks/fp8_gpu.py)."""
    from calibration.fp8 import quantize_linear_fp8
    from passes.lower_quantized_matmul import FP8_WEIGHT_OP

    torch.manual_seed(3)
    q = quantize_linear_fp8(torch.randn(24, 64) * 0.05, input_scale=0.02, observer="minmax")
    lowered = LowerQuantizedMatMul({"layer.proj": plain_weight(q)}, weight_format="cuda").call(
        _linear_model(np.ascontiguousarray(q.dequantize().numpy().T), np.float16)).model
    [node] = list(lowered.graph)
    assert (node.op_type, node.domain) == (FP8_WEIGHT_OP, "com.microsoft")
    assert node.attributes.get_int("block_size") == 64
    codes, scales, a_scale = (v.const_value for v in node.inputs[1:])
    assert codes.dtype == ir.DataType.FLOAT8E4M3FN and codes.shape == (24, 64)
    assert scales.dtype == ir.DataType.FLOAT and scales.shape == (24, 1)
    assert a_scale.dtype == ir.DataType.FLOAT and float(a_scale.numpy()) == np.float32(0.02)
    weight = codes.numpy().astype(np.float32) * scales.numpy()
    assert np.array_equal(weight, q.dequantize().numpy())
    assert "layer.proj.weight" not in lowered.graph.initializers
    assert lowered.opset_imports.get("com.microsoft") == 1


def test_cuda_fp8_scales_come_in_blocks_of_128_where_k_allows():
    """K = 256: block_size 128, each row's scale repeated over its two blocks (the block size of
    onnxruntime's native SM90 FP8 GEMM); the weight is still exactly the fake-quant one."""
    from calibration.fp8 import quantize_linear_fp8
    from passes.lower_quantized_matmul import FP8_BLOCK

    torch.manual_seed(4)
    q = quantize_linear_fp8(torch.randn(8, 2 * FP8_BLOCK) * 0.05, input_scale=0.02, observer="minmax")
    lowered = LowerQuantizedMatMul({"layer.proj": plain_weight(q)}, weight_format="cuda").call(
        _linear_model(np.ascontiguousarray(q.dequantize().numpy().T), np.float16)).model
    [node] = list(lowered.graph)
    assert node.attributes.get_int("block_size") == FP8_BLOCK
    codes, scales = (v.const_value.numpy() for v in node.inputs[1:3])
    assert scales.shape == (8, 2) and (scales[:, 0] == scales[:, 1]).all()
    weight = codes.astype(np.float32) * np.repeat(scales, FP8_BLOCK, axis=1)
    assert np.array_equal(weight, q.dequantize().numpy())
