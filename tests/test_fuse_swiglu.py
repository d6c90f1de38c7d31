"""The fuse-swiglu pass (custom-ops pipeline): an fp16 engine's Split -> QuickGelu -> Mul become
our SwiGLU op, the manifest names the custom-op domain, and the engine computes what the default
pipeline's does (CPU provider here; the CUDA kernel in tests/test_custom_ops.py)."""

from __future__ import annotations

import onnx
import pytest

from optimizer.core.errors import EngineError
from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine, SamplingParams
from runtime.session import make_session_options

LAYERS = 2  # tiny-llama


def build(path, dtype, passes):
    return build_engine(BuildOptions(out=path, random_weights=True, config="tiny-llama", dtype=dtype, passes=passes,
                                     max_seq_len=128, quiet=True))


def op_counts(engine_dir) -> dict[str, int]:
    model = onnx.load(str(engine_dir.model_path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def report(engine_dir, name: str) -> dict:
    return next(r for r in engine_dir.manifest["passes"] if r["name"] == name)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("swiglu")
    return build(root / "default", "fp16", "default"), build(root / "custom", "fp16", "custom-ops")


def test_each_mlp_becomes_one_swiglu_and_the_manifest_names_the_domain(engines):
    default, custom = engines
    before, after = op_counts(default), op_counts(custom)
    assert after.get("SwiGLU") == LAYERS and "QuickGelu" not in after
    assert after.get("Split", 0) == before["Split"] - LAYERS and after.get("Mul", 0) == before["Mul"] - LAYERS
    assert custom.manifest["custom_ops"] == ["optimizer.ops"] and "custom_ops" not in default.manifest
    fused = report(custom, "fuse-swiglu")
    assert fused["changed"] and f"{LAYERS} x Split + QuickGelu + Mul -> SwiGLU" in fused["notes"]
    assert fused["summary"].endswith("; opset imports added: optimizer.ops")
    assert custom.manifest["verification"]["top1_agreement"] == 1.0


def test_the_fused_engine_decodes_the_default_engines_tokens(engines):
    default, custom = engines
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    prompt = [1, 17, 230, 5, 99, 42]
    tokens = [Engine.load(e.path).generate_ids(prompt, params).token_ids for e in (default, custom)]
    assert tokens[0] == tokens[1]


def test_fp32_engines_are_left_as_they_are_with_the_reason(tmp_path):
    engine = build(tmp_path / "fp32", "fp32", "custom-ops")
    assert "SwiGLU" not in op_counts(engine) and "custom_ops" not in engine.manifest
    fused = report(engine, "fuse-swiglu")
    assert not fused["changed"]
    assert any("float16" in note for note in fused["notes"]), fused["notes"]


def test_an_engine_asking_for_unknown_custom_ops_is_refused():
    with pytest.raises(EngineError, match="custom ops of \\['other.ops'\\]"):
        make_session_options(None, custom_ops=("other.ops",))
