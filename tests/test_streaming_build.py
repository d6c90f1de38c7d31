"""--stream: a HuggingFace folder built with its weights left on disk (read tensor by tensor,
quantized as the engine file is written, verified layer by layer) gives the very engine the
in-memory build gives."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from calibration import quant_config, quantize_model
from calibration import deferred
from calibration.rtn import QuantSpec, rtn_quantize
from optimizer.core.errors import InputError
from optimizer.models.loader import load_model
from optimizer.models.streamed import layer_by_layer, materialized
from optimizer.models.weight_source import ModuleSource, SafetensorsSource
from optimizer.capture import decoder_dims
from optimizer.pipeline import BuildOptions, build_engine, calibrate_kv
from passes.lower_quantized_matmul import layout_of, pack, packed_layout
from passes.quantized_weights import IntWeight


def engine_digest(path: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.iterdir()) if f.name in ("model.onnx", "model.onnx.data")}


INT4 = dict(method="rtn", bits=4, group_size=32, symmetric=False, lm_head_bits=8)


@pytest.mark.parametrize("model,quant,dtype,extra", [
    ("llama", INT4, "fp32", {}),
    ("llama", INT4, "fp32", {"kv_cache_dtype": "int8", "kv_calib": "tiny:4x32"}),  # scales through the
    #                                                                       layer-by-layer reference
    ("qwen2-tied", INT4, "fp32", {}),  # the tied table quantized once, gathered from its codes
    ("gemma3", None, "fp16", {}),  # norm offsets, sliding layers, a float engine
    ("mistral", dict(method="rtn", bits=8, group_size=None), "fp32", {}),  # per-channel int8
])
def test_streamed_engine_is_the_in_memory_engine(tiny_hf_folders, tmp_path, model, quant, dtype, extra):
    digests = []
    for stream in (False, True):
        out = tmp_path / f"e-{stream}"
        opts = BuildOptions(out=out, source=str(tiny_hf_folders[model]), quant=quant and quant_config(**quant),
                            dtype=dtype, stream=stream, quiet=True, external_data="always", **extra)
        engine = build_engine(opts)
        digests.append(engine_digest(out))
        assert engine.manifest["verification"]["top1_agreement"] > 0.5
    assert digests[0] == digests[1]
    assert set(digests[0]) == {"model.onnx", "model.onnx.data"}


@pytest.mark.parametrize("model,quant", [
    ("llama", dict(method="awq", bits=4, group_size=32)),  # scales folded into the norms
    ("qwen2-tied", dict(method="gptq", bits=4, group_size=32, act_order=True, lm_head_bits=8)),  # GPTQ head,
    #                                                               the tied table quantized once
    ("llama", dict(method="awq-gptq", bits=4, group_size=32, symmetric=False)),
])
def test_streamed_calibrated_engine_is_the_in_memory_engine(tiny_hf_folders, tmp_path, model, quant):
    """AWQ / GPTQ with --stream: each layer read from disk for its own turn, the parameters
    calibration changed kept in memory; the engine is byte-identical to the in-memory build's."""
    digests = []
    for stream in (False, True):
        out = tmp_path / f"e-{stream}"
        opts = BuildOptions(out=out, source=str(tiny_hf_folders[model]), stream=stream, quiet=True,
                            quant=quant_config(**quant, calib="tiny:8x32"), external_data="always")
        engine = build_engine(opts)
        digests.append(engine_digest(out))
        assert engine.manifest["verification"]["top1_agreement"] > 0.5
    assert digests[0] == digests[1]


FP8 = dict(method="fp8", bits=8, group_size=None, calib="tiny:8x32")


@pytest.mark.parametrize("model,quant,extra", [
    ("llama", FP8, {}),
    ("qwen2-tied", FP8, {}),  # biases, a tied table kept in float
    ("llama", {**FP8, "smooth": 0.5, "observer": "percentile"}, {}),  # SmoothQuant folds into the norms
    ("qwen2-tied", {**FP8, "fp8_weights": "gptaq"}, {}),  # float_stream: the float layer on its own states
    ("llama", {**FP8, "fp8_weights": "gptq"}, {"kv_cache_dtype": "int8", "kv_calib": "tiny:4x32"}),  # KV
    #                                         scales through the layer-by-layer reference, FP8 weights
])
def test_streamed_fp8_engine_is_the_in_memory_engine(tiny_hf_folders, tmp_path, model, quant, extra):
    """FP8 with --stream: calibrated layer by layer as the integer methods are (each layer read
    for its own turn; its E4M3 codes and the parameters calibration changed kept); the engine
    and its manifest are the in-memory build's, but for the build's own record of --stream."""
    digests, manifests = [], []
    for stream in (False, True):
        out = tmp_path / f"e-{stream}"
        opts = BuildOptions(out=out, source=str(tiny_hf_folders[model]), stream=stream, quiet=True,
                            quant=quant_config(**quant), external_data="always", **extra)
        engine = build_engine(opts)
        digests.append(engine_digest(out))
        manifests.append(comparable(engine.manifest))
        assert engine.manifest["quantization"]["method"] == "fp8"
        assert engine.manifest["verification"]["top1_agreement"] > 0.5
    assert digests[0] == digests[1]
    assert manifests[0] == manifests[1]


def test_streamed_fp8_kv_cache_scales_are_the_in_memory_ones(tiny_hf_folders, tmp_path):
    """The fp8 KV cache (the paged layout's: built where CUDA is) takes its scales from the
    FP8-quantized model run layer by layer; streamed, they are the in-memory build's."""
    folder = tiny_hf_folders["llama"]
    opts = BuildOptions(out=tmp_path / "e", source=str(folder), kv_cache_dtype="fp8", kv_calib="tiny:4x32",
                        quiet=True)
    records = []
    for stream in (False, True):
        loaded = load_model(folder, stream=stream, quiet=True)
        codes = quantize_model(loaded, quant_config(**FP8, smooth=0.5), quiet=True).codes
        scales, record = calibrate_kv(opts, loaded, decoder_dims(loaded.config, loaded.arch), codes)
        assert len(scales) == loaded.config.num_hidden_layers and record["dtype"] == "fp8"
        records.append(record)
    assert records[0] == records[1]


def comparable(manifest: dict) -> dict:
    """A manifest without what legitimately differs between a streamed and an in-memory build
    of one engine: when it was built, how long quantization took, and the build inputs' own
    `stream` flag (with the identity key hashed over those inputs)."""
    out = json.loads(json.dumps(manifest))
    del out["created_at"], out["quantization"]["seconds"], out["identity"]["key"]
    assert out["identity"]["inputs"]["build"].pop("stream") in (False, True)
    return out


def test_streaming_refuses_what_it_cannot_stream(tiny_hf_folders, tmp_path):
    folder = str(tiny_hf_folders["llama"])
    with pytest.raises(InputError, match="distill-steps") as refused:
        build_engine(BuildOptions(out=tmp_path / "a", source=folder, stream=True, quiet=True,
                                  quant=quant_config(method="fp8", calib="tiny:8x32", distill_steps=2,
                                                     distill_data="tiny:8x32")))
    assert "drop --distill-steps" in refused.value.hint
    loaded = load_model(folder, stream=True, quiet=True)  # the library refuses too, before any work
    with pytest.raises(InputError, match="distill"):
        quantize_model(loaded, quant_config(method="fp8", calib="tiny:8x32", distill_steps=2,
                                            distill_data="tiny:8x32"), quiet=True)
    with pytest.raises(InputError, match="random"):
        load_model(random_weights=True, config="tiny-llama", stream=True)
    assert not (tmp_path / "a").exists()


def test_a_checkpoint_that_does_not_fit_its_config_is_refused_before_reading(tiny_hf_folders, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for f in tiny_hf_folders["llama"].iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    src = SafetensorsSource(sorted(tiny_hf_folders["llama"].glob("*.safetensors")))
    tensors = {n: src.tensor(n) for n in src.names()}
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"][:-1]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(InputError, match="up_proj.weight.*shape"):
        load_model(folder, stream=True)


def test_rows_of_a_tensor_are_read_alone(tiny_hf_folders):
    src = SafetensorsSource(sorted(tiny_hf_folders["llama"].glob("*.safetensors")))
    name = "model.embed_tokens.weight"
    whole = src.tensor(name)
    assert whole.dtype == torch.float32 and src.shape(name) == tuple(whole.shape)
    assert torch.equal(src.tensor(name, slice(3, 9)), whole[3:9])


def test_deferred_rtn_in_blocks_of_rows_equals_one_call(monkeypatch):
    torch.manual_seed(0)
    weight = torch.randn(37, 96)
    module = torch.nn.Linear(96, 37, bias=False)
    module.weight.data.copy_(weight)
    monkeypatch.setattr(deferred, "BLOCK_ELEMENTS", 96 * 5)  # blocks of 5 rows, the last of 2
    spec = QuantSpec(bits=4, group_size=32, symmetric=False)
    lazy = deferred.deferred_rtn(ModuleSource(module), "weight", spec)
    assert len(lazy._blocks()) == 8
    expected = rtn_quantize(weight, spec)
    got = lazy.compute()
    assert torch.equal(got.qweight, expected.qweight) and torch.equal(got.scales, expected.scales)
    assert torch.equal(got.zeros, expected.zeros)
    assert torch.equal(lazy.dequantized(), expected.dequantize())


@pytest.mark.parametrize("n,k,group,bits,symmetric", [
    (48, 96, 32, 4, False), (48, 96, 32, 4, True), (5, 576, 64, 4, False), (7, 100, 100, 8, False),
    (9, 64, 64, 4, False), (3, 160, 32, 8, True),
])
def test_the_announced_layout_is_the_packed_one(n, k, group, bits, symmetric):
    rng = np.random.default_rng(0)
    groups = -(-k // group)
    zeros = np.full((n, groups), 2 ** (bits - 1), np.uint8) if symmetric else \
        rng.integers(0, 2 ** bits, (n, groups)).astype(np.uint8)
    q = IntWeight(rng.integers(0, 2 ** bits, (n, k)).astype(np.uint8), rng.random((n, groups), np.float32),
                  zeros, bits, group)
    assert layout_of(pack(q, np.float32, symmetric)) == packed_layout(n, k, group, bits, symmetric)


def test_layer_by_layer_runs_the_model_in_the_memory_of_one_layer(tiny_hf_folders):
    folder = tiny_hf_folders["qwen2-tied"]
    eager = load_model(folder, quiet=True).model
    streamed = load_model(folder, stream=True, quiet=True)
    assert all(p.is_meta for p in streamed.model.parameters())
    ids = torch.tensor([[1, 5, 9, 200, 7, 3]])
    resident = []
    hook = streamed.model.model.layers[1].register_forward_hook(
        lambda *_: resident.append(sum(not p.is_meta for layer in streamed.model.model.layers
                                       for p in layer.parameters())))
    with torch.no_grad(), layer_by_layer(streamed.model, streamed.weights, streamed.arch) as model:
        got = model(input_ids=ids).logits
    hook.remove()
    with torch.no_grad():
        want = eager(input_ids=ids).logits
    assert torch.equal(got, want)
    assert resident == [len(list(streamed.model.model.layers[1].parameters()))]  # that layer's own only
    assert all(p.is_meta for p in streamed.model.parameters())
    with materialized(streamed.model, "model.layers.0.mlp", streamed.weights, streamed.arch) as mlp:
        assert torch.equal(mlp.up_proj.weight, eager.model.layers[0].mlp.up_proj.weight)
    assert streamed.model.model.layers[0].mlp.up_proj.weight.is_meta


def test_a_lying_or_truncated_checkpoint_is_refused_before_reading(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}, str(good))
    data = good.read_bytes()
    assert torch.equal(SafetensorsSource([good]).tensor("w", slice(1, 3)), torch.arange(4, 12.).reshape(2, 4))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[:-8])
    with pytest.raises(InputError, match="does not fit"):
        SafetensorsSource([truncated])
    length = int.from_bytes(data[:8], "little")
    header = data[8:8 + length].replace(b"[3,4]", b"[4,4]")  # a shape its bytes do not hold
    lying = tmp_path / "lying.safetensors"
    lying.write_bytes(len(header).to_bytes(8, "little") + header + data[8 + length:])
    with pytest.raises(InputError, match="does not fit"):
        SafetensorsSource([lying])
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes((10 ** 15).to_bytes(8, "little") + data[8:])
    with pytest.raises(InputError, match="header of"):
        SafetensorsSource([huge])
