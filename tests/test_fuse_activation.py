"""fuse-activation: SiLU (Mul(x, Sigmoid(x))) -> QuickGelu(alpha=1) in fp32 engines."""

from __future__ import annotations

from passes import PassContext
from tests.pass_helpers import apply, assert_same_outputs, captured, counts, feeds, run


def test_silu_fused(tiny_hf_folders):
    model, loaded = captured(tiny_hf_folders["llama"])
    inputs = feeds(loaded)
    before = run(model, inputs)
    model, [report] = apply(model, ["fuse-activation"])
    c = counts(model)
    assert report["changed"] and c["com.microsoft::QuickGelu"] == loaded.config.num_hidden_layers
    assert c["Sigmoid"] == 0
    assert_same_outputs(before, run(model, inputs))


def test_gelu_models_untouched_and_fp16_fused(tiny_hf_folders):
    model, _ = captured(tiny_hf_folders["gemma3"])  # GELU (tanh) is already one ONNX op
    assert not apply(model, ["fuse-activation"])[1][0]["changed"]
    model16, _ = captured(tiny_hf_folders["llama"], "fp16")  # CUDA has an fp16 QuickGelu kernel
    assert apply(model16, ["fuse-activation"], PassContext(dtype="fp16"))[1][0]["changed"]
