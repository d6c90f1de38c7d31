"""The int8 KV cache: calibrated per-layer scales, the quantize-kv-cache pass, and engines
whose GroupQueryAttention stores K/V as int8 (CPU), batched by the static executor."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import pytest
import torch

from calibration.kv_scales import INT8_MAX, rotary_bound
from optimizer.core.errors import EngineError, InputError
from optimizer.pipeline import BuildOptions, build_engine
from passes import PIPELINES, UNFUSED_PIPELINE
from runtime import Engine, SamplingParams
from runtime.executors import probe_logits
from optimizer.core.engine_format import KvCacheSpec
from runtime.session import check_layout_provider

CALIB = "tiny:8x64"


def test_rotary_bound_covers_every_rotation():
    """Rotate-half rotary mixes channel i with i + hd/2: no angle takes a value past the
    pair's bound sqrt(a_i^2 + a_j^2)."""
    absmax = torch.tensor([3.0, 0.5, 1.0, 4.0, 0.5, 0.0])  # pairs (3, 4), (0.5, 0.5), (1, 0)
    assert rotary_bound(absmax) == pytest.approx(5.0)
    g = torch.Generator().manual_seed(0)
    k = torch.randn(2000, 8, generator=g) * torch.tensor([1, 5, 0.1, 2, 3, 0.2, 4, 1])
    bound = rotary_bound(k.abs().amax(0))
    theta = torch.rand(2000, 4, generator=g) * 2 * math.pi
    a, b = k[:, :4], k[:, 4:]
    rotated = torch.cat([a * theta.cos() - b * theta.sin(), b * theta.cos() + a * theta.sin()], dim=1)
    assert float(rotated.abs().max()) <= bound + 1e-5


@pytest.fixture(scope="module")
def engines(tiny_hf_folders, tmp_path_factory):
    """tiny-llama, with a float and an int8 KV cache (3 slots x 64 positions)."""
    root = tmp_path_factory.mktemp("kv-int8")
    folder = str(tiny_hf_folders["llama"])
    built = {}
    for dtype in ("auto", "int8"):
        build_engine(BuildOptions(out=root / dtype, source=folder, quiet=True, kv_slots=3, kv_capacity=64,
                                  kv_cache_dtype=dtype, kv_calib=CALIB))
        built[dtype] = Engine.load(root / dtype)
    return built


def test_int8_engine_interface_scales_and_manifest(engines):
    engine = engines["int8"]
    kv = engine.manifest["kv_cache"]
    assert kv["dtype"] == "int8" and kv["layout"] == "static"
    layers = kv["num_layers"]
    assert len(kv["quantization"]["scales"]) == layers and kv["quantization"]["calibration"]["spec"] == CALIB
    model = ir.load(engine.dir.model_path)
    past = next(v for v in model.graph.inputs if v.name == "past_key_values.0.key")
    present = next(v for v in model.graph.outputs if v.name == "present.0.value")
    assert past.dtype == ir.DataType.INT8 and present.dtype == ir.DataType.INT8
    gqa = [n for n in model.graph if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == layers
    for node in gqa:
        assert node.attributes["k_quant_type"].value == "PER_TENSOR" and node.attributes["kv_cache_bit_width"].value == 8
        k_scale = node.inputs[12].const_value.numpy()
        assert k_scale.shape == (1,) and k_scale[0] > 0
    report = {p["name"]: p for p in engine.manifest["passes"]}["quantize-kv-cache"]
    assert report["changed"] and "int8 KV cache" in report["notes"][0]
    float_report = {p["name"]: p for p in engines["auto"].manifest["passes"]}["quantize-kv-cache"]
    assert not float_report["changed"] and engines["auto"].manifest["kv_cache"]["dtype"] == "fp32"
    assert engine.manifest["verification"]["top1_agreement"] >= 0.9
    from optimizer.inspect import kv_summary, precision_notes

    assert "K/V int8" in kv_summary(engine.dir.kv_cache)
    assert any("CPU provider only" in n for n in precision_notes(engine.manifest))
    assert not any("KV cache" in n for n in precision_notes(engines["auto"].manifest))


def test_int8_cache_tracks_the_float_cache(engines):
    """Over 60 positions (a prefill, then one decode step per token, reading back the int8
    cache each step), the logits stay close to the float-cache engine's."""
    ids = np.random.default_rng(0).integers(3, 500, 60).tolist()
    ref = probe_logits(engines["auto"].session, ids, 8)
    got = probe_logits(engines["int8"].session, ids, 8)
    assert got.shape == ref.shape
    scale = float(np.abs(ref).max())
    assert float(np.abs(got - ref).max()) < 0.05 * scale
    assert float(np.mean(got.argmax(-1) == ref.argmax(-1))) >= 0.9


def test_int8_cache_batches_continuously_like_one_at_a_time(engines):
    engine = engines["int8"]
    prompts = [[5, 6, 7], [9] * 20, [3, 4]]
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    alone = [engine.generate_ids(p, params).token_ids for p in prompts]
    batched = [r.token_ids for r in engine.generate_batch(prompts, params)]
    assert batched == alone


@pytest.mark.parametrize("name", ["gemma3", "qwen2"])
def test_int8_cache_on_other_families(name, tiny_hf_folders, tmp_path):
    """Gemma3 (K after QK-norm, sliding-window layers) and Qwen2 (k_proj bias)."""
    engine = build_engine(BuildOptions(out=tmp_path / "e", source=str(tiny_hf_folders[name]), quiet=True,
                                       kv_capacity=64, kv_cache_dtype="int8", kv_calib=CALIB))
    assert engine.manifest["kv_cache"]["dtype"] == "int8"
    assert engine.manifest["verification"]["top1_agreement"] >= 0.9
    result = Engine.load(tmp_path / "e").generate("The capital of France is",
                                                  SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert len(result.token_ids) == 4


@pytest.mark.parametrize("options, message", [
    ({"kv_cache_dtype": "int4"}, "unknown KV-cache dtype"),
    ({"kv_cache_dtype": "int8", "passes": UNFUSED_PIPELINE}, "needs the fuse-attention and quantize-kv-cache"),
    ({"kv_cache_dtype": "int8", "target": "tensorrt", "passes": PIPELINES["tensorrt"]}, "needs the fuse-attention"),
    ({"kv_cache_dtype": "int8", "target": "onnxruntime-cuda"}, "CPU attention kernel"),
    ({"kv_cache_dtype": "int8", "kv_layout": "paged", "dtype": "fp16"}, "as fp8 here, not int8"),
    ({"kv_cache_dtype": "int8"}, "has no tokenizer"),
    ({"kv_cache_dtype": "fp8"}, "the fp8 KV cache is the paged layout's"),
    ({"kv_cache_dtype": "fp8", "kv_layout": "static", "target": "onnxruntime-cuda"}, "paged layout's"),
    ({"kv_cache_dtype": "fp8", "kv_layout": "paged", "dtype": "fp16"}, "fp8 KV cache is calibrated on text"),
])
def test_bad_int8_cache_options_fail_before_any_work(tmp_path, monkeypatch, options, message):
    """Refused before any work (CUDA is made to look present, so the cache check is what refuses)."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(InputError, match=message):
        build_engine(BuildOptions(out=tmp_path / "e", random_weights=True, config="tiny-llama", quiet=True,
                                  **options))
    assert not (tmp_path / "e").exists()


def test_unknown_calibration_text_is_refused_before_any_work(tiny_hf_folders, tmp_path):
    with pytest.raises(InputError, match="nowhere"):
        build_engine(BuildOptions(out=tmp_path / "e", source=str(tiny_hf_folders["llama"]), quiet=True,
                                  kv_cache_dtype="int8", kv_calib="nowhere:8x64"))
    assert not (tmp_path / "e").exists()


def test_int8_cache_is_refused_on_cuda_before_onnxruntime_looks():
    kv = KvCacheSpec(2, 1, 16, "int8", "p{i}k", "p{i}v", "q{i}k", "q{i}v", layout="static", slots=1,
                     slot_capacity=16)
    with pytest.raises(EngineError, match="int8") as e:
        check_layout_provider(kv, "CUDAExecutionProvider")
    assert "--provider cpu" in e.value.hint
    check_layout_provider(kv, "CPUExecutionProvider")


def test_scales_map_the_calibrated_range_to_127(engines):
    scales = np.asarray(engines["int8"].manifest["kv_cache"]["quantization"]["scales"])
    assert (scales > 0).all() and (scales < 1e3 / INT8_MAX).all()
