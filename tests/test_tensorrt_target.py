"""`--target tensorrt`: a graph of standard ONNX ops only (opset 21; blocked DequantizeLinear
int4, FP8 Q/DQ, attention and norms decomposed), full-checked by onnx, that computes on
onnxruntime's CPU what the default (fused, com.microsoft) engine of the same model computes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from calibration import quant_config
from optimizer.core.errors import InputError
from optimizer.models.loader import load_model
from optimizer.pipeline import BuildOptions, build_engine
from passes import TENSORRT_PIPELINE
from runtime import Engine
from tests.conftest import engine_logits

CASES = {
    "int4": quant_config(method="rtn", bits=4, group_size=32),
    # tiny models have 64 input channels: one block of 128 with a 64-wide remainder
    "int4-g128": quant_config(method="rtn", bits=4, group_size=128),
    "int8-per-channel": quant_config(method="rtn", bits=8, group_size=None),
    "fp8": quant_config(method="fp8", bits=8, group_size=None, calib="tiny:8x64"),
    "float": None,
}


def _build(folder, out, quant, **kwargs):
    # each build gets a freshly loaded model: quantization changes its weights in place
    return build_engine(BuildOptions(out=out, source=str(folder), quant=quant, quiet=True, **kwargs),
                        loaded=load_model(str(folder), quiet=True))


@pytest.mark.parametrize("name,case", [("llama", "int4"), ("gemma3", "int4"), ("qwen2", "int8-per-channel"),
                                       ("llama", "int4-g128"),
                                       ("llama", "fp8"), ("mistral-sliding", "float")])
def test_tensorrt_graph_is_standard_and_matches_the_default_engine(name, case, tiny_hf_folders, tmp_path):
    folder, quant = tiny_hf_folders[name], CASES[case]
    trt = _build(folder, tmp_path / "trt", quant, target="tensorrt", passes=TENSORRT_PIPELINE)
    default = _build(folder, tmp_path / "ort", quant)
    proto = onnx.load(str(trt.model_path))
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} == {""}, "only standard ONNX ops"
    assert {o.domain: o.version for o in proto.opset_import} == {"": 21}
    m = trt.manifest
    assert m["target"] == "tensorrt" and m["tensorrt"]["onnx_opset"] == 21
    assert [p.keys() == {i.name for i in proto.graph.input} for p in m["tensorrt"]["profiles"]] == [True, True]
    expected = [] if quant is None else ["fp8" if quant.method == "fp8" else f"int{quant.bits}"]
    assert m["tensorrt"]["precisions"] == expected
    if quant is not None and quant.group_size is not None:
        # blocked over K (a group as wide as K is stored per output channel instead)
        blocks = [{a.name: a.i for a in n.attribute}.get("block_size")
                  for n in proto.graph.node if n.op_type == "DequantizeLinear"]
        assert quant.group_size in blocks and set(blocks) <= {quant.group_size, None}
    # same outputs as the default target's engine, through onnxruntime's CPU
    ids = np.random.default_rng(0).integers(0, 1000, (2, 12))
    mask = np.ones_like(ids)
    got = engine_logits(Engine.load(trt.path).session, ids, mask, 8)
    ref = engine_logits(Engine.load(default.path).session, ids, mask, 8)
    assert np.allclose(got, ref, atol=2e-3 * max(1.0, np.abs(ref).max())), np.abs(got - ref).max()


@pytest.mark.parametrize("kwargs,match", [
    (dict(passes=("lower-quantized-matmul", "fuse-rms-norm")), "fuse-rms-norm"),
    (dict(passes=TENSORRT_PIPELINE, kv_layout="static"), "kv-layout static"),
    (dict(passes=TENSORRT_PIPELINE, quant=quant_config(method="rtn", bits=4, group_size=32, symmetric=False)),
     "--asym"),
    (dict(passes=TENSORRT_PIPELINE, target="tensorrtx"), "unknown target"),
])
def test_tensorrt_target_refuses_what_it_cannot_express(kwargs, match, tmp_path):
    opts = BuildOptions(out=tmp_path / "e", random_weights=True, config="tiny-llama", **{"target": "tensorrt", **kwargs})
    with pytest.raises(InputError, match=match):
        opts.validate()
    assert not (tmp_path / "e").exists()


def test_cli_target_tensorrt_uses_the_standard_pipeline(tmp_path, smol_tokenizer_dir):
    from click.testing import CliRunner

    from optimizer.cli import main

    out = tmp_path / "e"
    result = CliRunner().invoke(main, ["model", "--random-weights", "--config", "tiny-llama", "--quant", "int4",
                                       "--target", "tensorrt", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["inspect", str(out)])
    assert "target tensorrt: standard ONNX ops only (opset 21), 2 optimization profiles" in " ".join(result.output.split())
    try:
        import tensorrt  # noqa: F401
    except ImportError:  # the build-trt step then fails cleanly, writing nothing
        result = CliRunner().invoke(main, ["build-trt", str(out), "--out", str(tmp_path / "model.plan")])
        assert result.exit_code == 4 and "tensorrt" in result.output and "pip install tensorrt" in result.output
        assert not (tmp_path / "model.plan").exists()
