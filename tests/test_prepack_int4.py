"""prepack-int4-sm90: int4 MatMulNBits weights in the layout of onnxruntime's native Hopper
mixed-input GEMM (weight_prepacked=2). The layout is checked byte for byte against
onnxruntime-genai 0.18's packer (tests/data/prepack_int4_sm90.npz: random B and that packer's
output, `CudaQuantizer.prepack_matmulnbits_weight(B, n, k, 4, force_arch=90)`); the engine
itself only on a compute capability 9.0 GPU (the last test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from calibration import quant_config, quantize_model
from optimizer.capture import capture
from optimizer.core.errors import EngineError, InputError
from optimizer.quantized import plain_weights
from passes import DEFAULT_PIPELINE, INT4_SM90_PIPELINE, PassContext
from passes.prepack_int4 import SM90, sm90_int4_layout
from tests.pass_helpers import apply, captured, counts

GOLDEN = Path(__file__).parent / "data" / "prepack_int4_sm90.npz"
SM90_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def test_the_int4_sm90_pipeline_is_the_default_one_with_the_pass_before_cse():
    assert INT4_SM90_PIPELINE.index("prepack-int4-sm90") == INT4_SM90_PIPELINE.index("cse") - 1
    assert [p for p in INT4_SM90_PIPELINE if p != "prepack-int4-sm90"] == list(DEFAULT_PIPELINE)


def test_the_layout_is_onnxruntime_genais_packers_byte_for_byte():
    golden = np.load(GOLDEN, allow_pickle=False)
    for i in range(3):
        n, k, _ = golden[f"nk{i}"].tolist()
        B = golden[f"B{i}"]
        got = sm90_int4_layout(B, n, k)
        assert got.shape == B.shape and got.dtype == np.uint8
        assert np.array_equal(got, golden[f"sm90_{i}"]), i
        assert not np.array_equal(got, B)  # a rearrangement, not the identity
        assert np.array_equal(np.sort(_codes(got), axis=None), np.sort(_codes(B), axis=None))  # the same codes


def _codes(B: np.ndarray) -> np.ndarray:
    return np.stack([B & 0x0F, B >> 4], axis=-1)


def test_the_pass_rewrites_eligible_weights_and_leaves_the_embedding_alone(tiny_hf_folders):
    """Symmetric int4 in blocks of 64 (lm_head too): every MatMulNBits takes the SM90 layout
    through a new initializer, and the tied embedding's GatherBlockQuantized still reads the
    standard one; blocks of 32 are left alone, with the reason in the notes."""
    model, loaded = captured(tiny_hf_folders["qwen2-tied"])
    result = quantize_model(loaded, quant_config(method="rtn", bits=4, group_size=64, lm_head_bits=4))
    ctx = PassContext(codes=plain_weights(result.codes), max_positions=64, dtype="fp16")
    model, _ = apply(capture(loaded, "fp16"), ["lower-quantized-matmul", "pack-qkv", "pack-gate-up"], ctx)
    before = {n.name: n.inputs[1].const_value.numpy().copy() for n in model.graph if n.op_type == "MatMulNBits"}
    model, [report] = apply(model, ["prepack-int4-sm90"], ctx)
    assert report["changed"] and f"{len(before)} MatMulNBits weights" in report["notes"][0]
    assert counts(model)["com.microsoft::GatherBlockQuantized"] == 1
    for node in model.graph:
        if node.op_type == "MatMulNBits":
            n, k = node.attributes["N"].value, node.attributes["K"].value
            assert node.attributes["weight_prepacked"].value == SM90
            assert np.array_equal(node.inputs[1].const_value.numpy(), sm90_int4_layout(before[node.name], n, k))
        if node.op_type == "GatherBlockQuantized":  # reads the standard layout
            assert not node.inputs[0].name.endswith(".sm90")

    result = quantize_model(loaded, quant_config(method="rtn", bits=4, group_size=32))
    ctx = PassContext(codes=plain_weights(result.codes), max_positions=64, dtype="fp16")
    model, _ = apply(capture(loaded, "fp16"), ["lower-quantized-matmul"], ctx)
    model, [report] = apply(model, ["prepack-int4-sm90"], ctx)
    assert not report["changed"] and "block 32" in report["notes"][1]
    assert counts(model)["com.microsoft::MatMulNBits"] > 0


def test_the_build_asks_for_what_the_kernel_takes(tmp_path, monkeypatch):
    import onnxruntime as ort

    from optimizer.pipeline import BuildOptions

    def opts(**kw):
        base = dict(out=tmp_path / "e", random_weights=True, config="tiny-llama", passes="int4-sm90", dtype="fp16",
                    quant=quant_config(method="rtn", bits=4, group_size=64), target="onnxruntime-cuda")
        return BuildOptions(**{**base, **kw})

    import runtime.gpu_memory
    import runtime.int4_sm90

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(runtime.gpu_memory, "compute_capability", lambda: "9.0")
    monkeypatch.setattr(runtime.int4_sm90, "kernel_missing", lambda: None)
    opts().validate()
    with pytest.raises(InputError, match="runs on CUDA only") as err:
        opts(target="onnxruntime").validate()
    assert "--target onnxruntime-cuda" in err.value.hint
    for bad in (dict(quant=quant_config(method="rtn", bits=4, group_size=32)),
                dict(quant=quant_config(method="rtn", bits=4, group_size=64, symmetric=False)),
                dict(quant=quant_config(method="rtn", bits=8, group_size=64)),
                dict(quant=None)):
        with pytest.raises(InputError, match="symmetric 4-bit weights in groups of 64 or 128"):
            opts(**bad).validate()
    assert not (tmp_path / "e").exists()


def test_the_build_needs_a_hopper_gpu_and_an_onnxruntime_with_the_kernel(tmp_path, monkeypatch):
    """Before anything is loaded: the engine is verified on this machine's GPU, so it must be a
    9.0 one, and onnxruntime-gpu 1.31.1's Linux wheel has no SM90 int4 kernel (seen on an H200)."""
    import onnxruntime as ort

    import runtime.gpu_memory
    import runtime.int4_sm90
    from optimizer.pipeline import BuildOptions

    opts = BuildOptions(out=tmp_path / "e", random_weights=True, config="tiny-llama", passes="int4-sm90",
                        dtype="fp16", quant=quant_config(method="rtn", bits=4, group_size=64),
                        target="onnxruntime-cuda")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(runtime.int4_sm90, "kernel_missing", lambda: None)
    monkeypatch.setattr(runtime.gpu_memory, "compute_capability", lambda: "8.0")
    with pytest.raises(InputError, match="compute capability 9.0 GPUs .* capability is 8.0") as err:
        opts.validate()
    assert "H100 or H200" in err.value.hint
    said = "weight_prepacked=2 (SM90 layout) is not supported by this ONNX Runtime build"
    monkeypatch.setattr(runtime.gpu_memory, "compute_capability", lambda: "9.0")
    monkeypatch.setattr(runtime.int4_sm90, "kernel_missing", lambda: said)
    with pytest.raises(InputError, match="no native SM90 int4 kernel") as err:
        opts.validate()
    assert said in str(err.value) and "without --passes int4-sm90" in err.value.hint
    assert not (tmp_path / "e").exists()


def test_an_engine_in_the_layout_is_refused_where_onnxruntime_lacks_the_kernel(monkeypatch):
    import runtime.int4_sm90
    from runtime.session import check_sm90_kernel

    section = {"format": "MatMulNBits, B in the SM90 (Hopper) layout", "provider": "cuda", "compute_capability": "9.0"}
    monkeypatch.setattr(runtime.int4_sm90, "kernel_missing", lambda: None)
    check_sm90_kernel(section)
    monkeypatch.setattr(runtime.int4_sm90, "kernel_missing", lambda: "not supported by this ONNX Runtime build")
    check_sm90_kernel({"format": "MatMulNBits", "provider": "cuda"})  # the standard layout: any onnxruntime
    with pytest.raises(EngineError, match="no native SM90 int4 kernel") as err:
        check_sm90_kernel(section)
    assert "rebuild without --passes int4-sm90" in err.value.hint


def test_onnxruntimes_refusal_is_quoted_from_its_point():
    from runtime.int4_sm90 import refusal

    said = ("[ONNXRuntimeError] : 1 : FAIL : Exception during initialization: /onnxruntime_src/onnxruntime/"
            "contrib_ops/cuda/quantization/matmul_nbits.cc:499 void onnxruntime::contrib::cuda::"
            "ValidateSm90PrepackedWeightSupport(int, int64_t) weight_prepacked=2 (SM90 layout) is not supported "
            "by this ONNX Runtime build (the native SM90 Hopper fpA_intB kernel is unavailable, e.g. on "
            "Windows/MSVC). Re-export the model with weight_prepacked=0 or 1\nstack")  # an H200, 1.31.1
    assert refusal(said).startswith("weight_prepacked=2 (SM90 layout) is not supported by this ONNX Runtime build")
    assert refusal("CUDA failure 2: out of memory\nmore") == "CUDA failure 2: out of memory"


def test_the_probe_is_one_sm90_marked_matmulnbits():
    import onnx

    from runtime.int4_sm90 import probe_model

    model = onnx.load_from_string(probe_model())
    onnx.checker.check_model(model)
    (node,) = model.graph.node
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == "MatMulNBits" and attrs["weight_prepacked"] == 2
    assert (attrs["bits"], attrs["block_size"], attrs["K"], attrs["N"]) == (4, 64, 128, 128)


def test_the_engine_says_which_gpus_it_needs(tmp_path, monkeypatch):
    """The manifest records CUDA and compute capability 9.0; opening such an engine on another
    GPU generation is refused with what to do (the check itself, fed a capability)."""
    import onnxruntime as ort

    from optimizer.manifest import weight_format_section
    from optimizer.pipeline import BuildOptions
    from runtime.session import check_compute_capability

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    opts = BuildOptions(out=tmp_path / "e", random_weights=True, config="tiny-llama", passes="int4-sm90",
                        dtype="fp16", quant=quant_config(method="rtn", bits=4, group_size=64),
                        target="onnxruntime-cuda")
    section = weight_format_section(opts)
    assert section["provider"] == "cuda" and section["compute_capability"] == "9.0"
    check_compute_capability(section, "9.0")
    check_compute_capability({"format": "MatMulNBits"}, "8.0")  # engines for any GPU
    with pytest.raises(EngineError, match="compute capability 9.0") as err:
        check_compute_capability(section, "8.0")
    assert "without --passes int4-sm90" in err.value.hint


@pytest.mark.skipif(not SM90_GPU, reason="needs a compute capability 9.0 GPU (onnxruntime's Hopper int4 kernel)")
def test_sm90_engine_computes_what_the_standard_layout_computes(tmp_path):
    """The same int4 weights in both layouts on an H100/H200: the engine with the SM90 layout
    verifies on CUDA, says in its manifest that it needs CUDA, and gives the standard engine's
    greedy tokens (logits within fp16 rounding of the two kernels)."""
    from optimizer.pipeline import BuildOptions, build_engine
    from runtime import Engine, SamplingParams
    from runtime.int4_sm90 import kernel_missing

    if kernel_missing():  # onnxruntime-gpu 1.31.1's Linux wheel (the refusal: the tests above)
        pytest.skip(f"this onnxruntime-gpu has no SM90 int4 kernel: {kernel_missing()}")

    cfg = quant_config(method="rtn", bits=4, group_size=64, lm_head_bits=4)
    common = dict(random_weights=True, config="tiny-llama", dtype="fp16", quant=cfg, target="onnxruntime-cuda",
                  quiet=True)
    standard = build_engine(BuildOptions(out=tmp_path / "std", **common))
    sm90 = build_engine(BuildOptions(out=tmp_path / "sm90", passes="int4-sm90", **common))
    assert sm90.manifest["quantization"]["provider"] == "cuda"
    assert sm90.manifest["quantization"]["compute_capability"] == "9.0"
    assert "SM90" in sm90.manifest["quantization"]["format"]
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    a, b = Engine.load(standard.path, provider="cuda"), Engine.load(sm90.path, provider="cuda")
    for prompt in ([5, 9, 33, 4], list(range(10, 60))):
        assert a.generate_ids(prompt, params).token_ids == b.generate_ids(prompt, params).token_ids
