"""The pass pipeline: registry, reports, --dump-ir-after, pipelines by name, and errors."""

from __future__ import annotations

import pytest

from optimizer.core.errors import InputError
from passes import DEFAULT_PIPELINE, PAGED_PIPELINE, PIPELINES, REGISTRY, UNFUSED_PIPELINE
from passes.pipeline import PassError, resolve_pass_names, run_passes
from tests.pass_helpers import captured


def test_pipelines_name_registered_passes():
    for names in PIPELINES.values():
        assert all(n in REGISTRY for n in names)
    assert resolve_pass_names("default") == DEFAULT_PIPELINE
    assert resolve_pass_names("unfused") == UNFUSED_PIPELINE
    assert resolve_pass_names("none") == ()
    assert resolve_pass_names("fuse-rms-norm, dead-code") == ("fuse-rms-norm", "dead-code")


def test_the_paged_layout_with_float_weights_keeps_gate_and_up_apart(tmp_path):
    """A build's default pipeline: PAGED_PIPELINE (no pack-gate-up) for the paged layout with
    float weights; the default pipeline for other layouts, quantized weights, or passes asked."""
    from calibration.config import quant_config
    from optimizer.pipeline import BuildOptions

    def names(**kw):
        return BuildOptions(out=tmp_path / "e", random_weights=True, **kw).pass_names

    assert names(kv_layout="paged") == PAGED_PIPELINE and "pack-gate-up" not in PAGED_PIPELINE
    assert set(DEFAULT_PIPELINE) - set(PAGED_PIPELINE) == {"pack-gate-up"}
    assert names(kv_layout="static") == names() == DEFAULT_PIPELINE
    assert names(kv_layout="paged", quant=quant_config(method="rtn", bits=4)) == DEFAULT_PIPELINE
    assert names(kv_layout="paged", passes="default") == DEFAULT_PIPELINE


def test_passes_declare_what_must_run_before_them():
    from passes.pipeline import check_order

    for names in PIPELINES.values():
        check_order(names)  # the shipped pipelines respect every declaration
    with pytest.raises(InputError, match="'kv-layout' must run after 'fuse-attention'") as e:
        resolve_pass_names("kv-layout,fuse-attention")
    assert "put fuse-attention before kv-layout" in e.value.hint
    assert resolve_pass_names("kv-layout") == ("kv-layout",)  # a pass that is absent imposes nothing


def test_build_options_name_the_passes_that_implement_them():
    """The registry says which pass implements which build option; a build asking for the
    option without the pass is refused with the pass's name (optimizer.build_checks)."""
    owners = {info.option: info.name for info in REGISTRY.values() if info.option}
    assert owners == {"quant": "lower-quantized-matmul", "kv_layout": "kv-layout",
                      "kv_cache_dtype": "quantize-kv-cache"}


def test_unknown_pass_is_an_input_error():
    with pytest.raises(InputError, match="unknown pass 'fuse-everything'"):
        resolve_pass_names("fuse-everything")


def test_reports_and_dumps(tiny_hf_folders, tmp_path):
    model, _ = captured(tiny_hf_folders["llama"])
    model, reports = run_passes(model, DEFAULT_PIPELINE, dump_after=["fuse-attention"], dump_dir=tmp_path)
    by_name = {r["name"]: r for r in reports}
    assert by_name["lower-quantized-matmul"]["summary"] == "nothing to rewrite"
    attn = by_name["fuse-attention"]
    assert attn["changed"] and attn["nodes_after"] < attn["nodes_before"]
    assert attn["op_delta"]["com.microsoft::GroupQueryAttention"] == 2 and attn["notes"]
    dumps = list(tmp_path.iterdir())
    assert [d.name for d in dumps] == [f"{DEFAULT_PIPELINE.index('fuse-attention'):02d}-after-fuse-attention.txt"]
    assert "GroupQueryAttention" in dumps[0].read_text()


def test_a_crashing_pass_is_reported_by_name(tiny_hf_folders, monkeypatch):
    from passes import PassInfo

    def boom(ctx):
        raise_in_call = type("Boom", (), {"__call__": lambda self, model: 1 / 0})
        return raise_in_call()

    monkeypatch.setitem(REGISTRY, "fuse-rms-norm", PassInfo("fuse-rms-norm", "x", boom))
    model, _ = captured(tiny_hf_folders["llama"])
    with pytest.raises(PassError, match="graph pass 'fuse-rms-norm' failed: ZeroDivisionError"):
        run_passes(model, ["fuse-rms-norm"])
