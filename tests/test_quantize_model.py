"""Quantizing whole (tiny) models with each method, through the engine: the engine equals the
torch fake-quant model, the manifest records the settings, bad settings are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibration import quant_config, quantize_model
from calibration.data import parse_spec, token_windows
from optimizer.core.errors import InputError
from optimizer.evaluate import engine_logits_fn, perplexity, torch_logits_fn
from optimizer.models.loader import load_model
from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine

CALIB = "tiny:8x64"


def _loaded(folder):
    return load_model(str(folder), quiet=True)


@pytest.mark.parametrize("name,cfg", [
    ("llama", quant_config(method="rtn", bits=4, group_size=32)),
    ("qwen2", quant_config(method="rtn", bits=8, group_size=None, symmetric=False)),
    ("llama", quant_config(method="gptq", bits=4, group_size=32, symmetric=False, act_order=True, calib=CALIB)),
    ("gemma3", quant_config(method="gptq", bits=4, group_size=32, calib=CALIB)),
    ("llama", quant_config(method="awq", bits=4, group_size=32, symmetric=False, calib=CALIB, awq_grid=4)),
    ("gemma3", quant_config(method="awq", bits=4, group_size=32, calib=CALIB, awq_grid=4)),
    ("mistral", quant_config(method="awq", bits=4, group_size=64, calib=CALIB, awq_grid=4,
                            keep=("lm_head", "*embed_tokens*", "*.down_proj"))),
    ("qwen2", quant_config(method="awq-gptq", bits=4, group_size=32, act_order=True, calib=CALIB, awq_grid=4)),
])
def test_engine_equals_fake_quant_torch(name, cfg, tiny_hf_folders, tmp_path):
    loaded = _loaded(tiny_hf_folders[name])
    engine_dir = build_engine(BuildOptions(out=tmp_path / "e", source=str(tiny_hf_folders[name]),
                                           quant=cfg, quiet=True), loaded=loaded)
    m = engine_dir.manifest
    q = m["quantization"]
    assert (q["method"], q["bits"], q["group_size"], q["symmetric"]) == (cfg.method, cfg.bits, cfg.group_size, cfg.symmetric)
    assert q["format"] == "MatMulNBits"
    expected = sum(1 for i in range(loaded.config.num_hidden_layers) for r in range(7)) - \
        (loaded.config.num_hidden_layers if "*.down_proj" in cfg.keep else 0)
    assert q["quantized_modules"] == expected
    lowered = next(p for p in m["passes"] if p["name"] == "lower-quantized-matmul")
    assert lowered["op_delta"]["com.microsoft::MatMulNBits"] == expected
    if cfg.method != "rtn":
        assert q["calibration"]["spec"] == CALIB and len(q["calibration"]["sha256"]) == 64
    # the engine computes the torch fake-quant model (fp32 compute in MatMulNBits)
    assert m["verification"]["max_abs_logit_diff"] < 1e-4
    engine = Engine.load(engine_dir.path)
    windows = np.random.default_rng(0).integers(0, 49152, (2, 24))
    ours = perplexity(engine_logits_fn(engine), windows)["perplexity"]
    ref = perplexity(torch_logits_fn(loaded.model), windows)["perplexity"]
    assert abs(ours - ref) / ref < 1e-4


def test_quantization_changes_the_weights_as_recorded(tiny_hf_folders):
    loaded = _loaded(tiny_hf_folders["llama"])
    before = loaded.model.model.layers[0].mlp.down_proj.weight.clone()
    result = quantize_model(loaded, quant_config(method="gptq", group_size=32, calib=CALIB), quiet=True)
    after = loaded.model.model.layers[0].mlp.down_proj.weight
    q = result.codes["model.layers.0.mlp.down_proj"]
    assert not torch.equal(before, after)
    assert torch.equal(after, q.dequantize())
    assert "lm_head" in result.manifest["kept_in_float"]


def test_awq_and_gptq_beat_rtn_on_calibration_loss(tiny_hf_folders):
    """On the calibration text itself, calibrated methods fit the float model better than RTN."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_hf_folders["llama"])
    windows = token_windows(tok, parse_spec("tiny:8x64"))
    float_model = _loaded(tiny_hf_folders["llama"]).model
    ref = torch_logits_fn(float_model)(windows)
    errors = {}
    for method in ("rtn", "gptq", "awq", "awq-gptq"):
        loaded = _loaded(tiny_hf_folders["llama"])
        quantize_model(loaded, quant_config(method=method, group_size=32, symmetric=False, calib="tiny:8x64"),
                       quiet=True)
        errors[method] = float(np.mean((torch_logits_fn(loaded.model)(windows) - ref) ** 2))
    assert errors["gptq"] < errors["rtn"] and errors["awq"] < errors["rtn"] and errors["awq-gptq"] < errors["rtn"]


def test_manifest_lists_only_the_settings_of_its_method():
    rtn = quant_config(method="rtn").to_manifest()
    assert not {"act_order", "damp", "awq_grid", "observer", "calib", "distill_steps"} & set(rtn)
    assert (rtn["bits"], rtn["group_size"], rtn["symmetric"]) == (4, 64, True)
    gptq = quant_config(method="gptq").to_manifest()
    assert {"act_order", "damp", "calib", "batch_size"} <= set(gptq) and "awq_grid" not in gptq
    awq = quant_config(method="awq").to_manifest()
    assert {"awq_grid", "awq_clip"} <= set(awq) and "act_order" not in awq
    fp8 = quant_config(method="fp8", bits=8, group_size=None).to_manifest()
    assert fp8["observer"] == "minmax" and not {"damp", "percentile", "distill_steps", "act_order"} & set(fp8)
    assert "damp" in quant_config(method="fp8", bits=8, group_size=None, fp8_weights="gptq").to_manifest()


@pytest.mark.parametrize("settings,message", [
    (dict(method="smoothquant"), "unknown quantization method 'smoothquant'"),
    (dict(bits=3), "unsupported bit width 3"),
    (dict(method="awq", calib=None), "--method awq needs calibration data"),
    (dict(method="rtn", act_order=True), "--act-order applies to --method gptq or awq-gptq only"),
    (dict(method="awq", act_order=True), "--act-order applies to --method gptq or awq-gptq only"),
])
def test_bad_settings(settings, message, tmp_path):
    """Refused when the configuration is made (a setting of another method) or when the build
    validates it (a value out of range): either way before anything is written."""
    with pytest.raises(InputError, match=message):
        build_engine(BuildOptions(out=tmp_path / "e", random_weights=True, config="tiny-llama",
                                  quant=quant_config(**settings), quiet=True))
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("method", ["rtn", "awq", "gptq"])
def test_group_wider_than_some_inputs(method, tiny_hf_folders, tmp_path):
    """Groups of 128 over 64-wide inputs (tiny models: hidden 64, intermediate 128): the last
    (here only) group of those rows is narrower, MatMulNBits pads its block, and the engine
    still computes what the torch fake-quant model does (build verification)."""
    cfg = quant_config(method=method, group_size=128, symmetric=False, calib="tiny:8x32")
    engine = build_engine(BuildOptions(out=tmp_path / "e", source=str(tiny_hf_folders["llama"]), quant=cfg,
                                       quiet=True), loaded=load_model(str(tiny_hf_folders["llama"]), quiet=True))
    assert engine.manifest["verification"]["max_abs_logit_diff"] < 1e-3
    blocks = {(n["K"], n["block_size"]) for n in _matmulnbits_attrs(engine.model_path)}
    assert blocks == {(64, 128), (128, 128)}


def _matmulnbits_attrs(path) -> list[dict]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            for n in proto.graph.node if n.op_type == "MatMulNBits"]


def test_quant_without_lowering_pass_is_refused(tmp_path):
    with pytest.raises(InputError, match="needs the lower-quantized-matmul pass"):
        build_engine(BuildOptions(out=tmp_path / "e", random_weights=True, config="tiny-llama",
                                  quant=quant_config(), passes=("cse",), quiet=True))


@pytest.mark.parametrize("name", ["qwen2", "qwen2-tied"])
def test_lm_head_quantized_on_request(name, tiny_hf_folders, tmp_path):
    """lm_head_bits: the output projection becomes a MatMulNBits; an untied model keeps its
    float embedding table, a tied one gathers its embeddings from the head's codes
    (GatherBlockQuantized), so the table is stored once, quantized; the engine verifies."""
    from optimizer.pipeline import BuildOptions, build_engine

    cfg = quant_config(method="rtn", bits=4, group_size=32, lm_head_bits=8)
    engine = build_engine(BuildOptions(out=tmp_path / "e", source=str(tiny_hf_folders[name]), quant=cfg,
                                       quiet=True))
    m = engine.manifest
    assert "lm_head" not in m["quantization"]["kept_in_float"]
    assert m["model"]["outputs"][0] == "logits"
    import onnx

    graph = onnx.load(str(engine.model_path)).graph
    vocab = m["architecture"]["config"]["vocab_size"]
    heads = [n for n in graph.node if n.op_type == "MatMulNBits"
             and any(a.name == "N" and a.i == vocab for a in n.attribute)]
    assert len(heads) == 1 and any(a.name == "bits" and a.i == 8 for a in heads[0].attribute)
    tied = name == "qwen2-tied"
    assert any(i.name == "model.embed_tokens.weight" for i in graph.initializer) == (not tied)
    assert [n.op_type for n in graph.node].count("GatherBlockQuantized") == int(tied)
    assert m["quantization"]["embedding_shares_lm_head"] == tied
    assert ("embed_tokens" in m["quantization"]["kept_in_float"]) == (not tied)
    assert m["verification"]["top1_agreement"] >= 0.9


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_a_tied_table_is_stored_once_and_computes_what_torch_does(bits, symmetric, tiny_hf_folders, tmp_path):
    """A tied, quantized lm_head: the fp32 engine stores the table once (codes, scales, zero
    points), and verifies to fp32 noise against the torch model, whose embedding took the
    same dequantized values; it is smaller than the float table alone."""
    cfg = quant_config(method="rtn", bits=4, group_size=32, symmetric=symmetric, lm_head_bits=bits)
    engine = build_engine(BuildOptions(out=tmp_path / "e", source=str(tiny_hf_folders["qwen2-tied"]), quant=cfg,
                                       quiet=True))
    assert engine.manifest["verification"]["max_abs_logit_diff"] < 1e-4
    config = engine.manifest["architecture"]["config"]
    float_table = config["vocab_size"] * config["hidden_size"] * 4
    assert engine.manifest["model"]["weight_bytes"] < float_table


@pytest.mark.parametrize("name", ["qwen2-tied", "gemma3"])
def test_gptq_quantizes_lm_head_against_the_final_norm_outputs(name, tiny_hf_folders, tmp_path):
    """With method gptq (and awq-gptq), the output projection is rounded by GPTQ on the quantized model's
    final-norm outputs: on those inputs its logits error is below RTN's of the same weights;
    the engine verifies."""
    from calibration.rtn import QuantSpec, rtn_quantize

    folder = str(tiny_hf_folders[name])
    loaded = load_model(folder, quiet=True)
    W0 = loaded.model.get_output_embeddings().weight.detach().clone()
    cfg = quant_config(method="gptq", bits=4, group_size=32, lm_head_bits=4, calib="tiny:8x64")
    engine = build_engine(BuildOptions(out=tmp_path / "e", source=folder, quant=cfg, quiet=True), loaded=loaded)
    assert engine.manifest["quantization"]["lm_head_method"] == "gptq"
    assert engine.manifest["verification"]["top1_agreement"] >= 0.9
    head = loaded.model.get_output_embeddings()
    seen = []
    handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    windows = token_windows(loaded.tokenizer, parse_spec("tiny:8x64"),
                            loaded.config.bos_token_id if loaded.arch.needs_bos else None)
    with torch.no_grad():
        loaded.model(input_ids=torch.from_numpy(windows))
    handle.remove()
    X = seen[0].reshape(-1, W0.shape[1]).float()
    rtn = rtn_quantize(W0, QuantSpec(bits=4, group_size=32, symmetric=True)).dequantize()
    err = lambda W: float((X @ (W.float() - W0.float()).T).pow(2).mean())  # noqa: E731
    assert err(head.weight) < err(rtn)
    awq_gptq = quant_config(method="awq-gptq", bits=4, group_size=32, lm_head_bits=4, calib="tiny:8x64", awq_grid=4)
    assert quantize_model(load_model(folder, quiet=True), awq_gptq, quiet=True).manifest["lm_head_method"] == "gptq"
    rtn_cfg = quant_config(method="rtn", bits=4, group_size=32, lm_head_bits=4)
    assert quantize_model(load_model(folder, quiet=True), rtn_cfg, quiet=True).manifest["lm_head_method"] == "rtn"
