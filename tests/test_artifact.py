"""The engine directory: manifest contents, checksums, format version, atomic build."""

from __future__ import annotations

import json

import pytest

from optimizer import pipeline
from optimizer.core.artifact import load_engine
from optimizer.core.engine_format import FORMAT_VERSION
from optimizer.core.errors import EngineError, InputError
from optimizer.pipeline import BuildOptions, build_engine
from passes import DEFAULT_PIPELINE


def _opts(out, tok, **kw):
    return BuildOptions(out=out, random_weights=True, config="tiny-llama", tokenizer=str(tok), quiet=True, **kw)


@pytest.fixture(scope="module")
def engine(tmp_path_factory, smol_tokenizer_dir):
    return build_engine(_opts(tmp_path_factory.mktemp("e") / "engine", smol_tokenizer_dir))


def test_manifest_records_everything(engine):
    m = engine.manifest
    assert m["format_version"] == FORMAT_VERSION
    assert m["source"] == {"kind": "random", "config": "tiny-llama", "seed": 0, "files": []}
    assert m["architecture"]["name"] == "llama"
    assert m["architecture"]["config"]["hidden_size"] == 64
    assert m["dtype"] == "fp32" and m["quantization"] == {"method": "none"}
    assert [p["name"] for p in m["passes"]] == list(DEFAULT_PIPELINE)
    assert m["passes"][0]["summary"] == "nothing to rewrite"  # an fp32 engine has no quantized linears
    fused = {p["name"]: p for p in m["passes"]}["fuse-attention"]
    assert fused["changed"] and fused["op_delta"]["com.microsoft::GroupQueryAttention"] == 2
    assert m["kv_cache"]["layout"] == "static" and m["kv_cache"]["num_layers"] == 2
    assert m["kv_cache"]["slots"] == 16 and m["kv_cache"]["slot_capacity"] >= 1
    assert m["kv_cache"]["attention"] == "GroupQueryAttention" and m["kv_cache"]["padding"] == "right"
    for tool in ("torch", "transformers", "onnx", "onnxruntime", "onnx_ir", "python"):
        assert m["versions"][tool]
    on_disk = {p.relative_to(engine.path).as_posix() for p in engine.path.rglob("*") if p.is_file()}
    assert set(m["files"]) == on_disk - {"manifest.json"}
    assert {"model.onnx", "tokenizer.json", "generation_config.json"} <= set(m["files"])
    assert m["verification"]["max_abs_logit_diff"] < 1e-4
    assert m["verification"]["top1_agreement"] == 1.0


def test_external_data_when_asked(tmp_path, smol_tokenizer_dir):
    e = build_engine(_opts(tmp_path / "e", smol_tokenizer_dir, external_data="always"))
    assert e.manifest["model"]["external_data"] == "model.onnx.data"
    assert (e.path / "model.onnx.data").stat().st_size > (e.path / "model.onnx").stat().st_size
    load_engine(e.path)  # checksums cover the data file


def test_tampered_file_fails_checksum(tmp_path, smol_tokenizer_dir):
    e = build_engine(_opts(tmp_path / "e", smol_tokenizer_dir))
    with open(e.path / "model.onnx", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"XXXXXXXX")
    with pytest.raises(EngineError, match="model.onnx fails its checksum"):
        load_engine(e.path)


def test_missing_file_is_reported(tmp_path, smol_tokenizer_dir):
    e = build_engine(_opts(tmp_path / "e", smol_tokenizer_dir))
    (e.path / "tokenizer.json").unlink()
    with pytest.raises(EngineError, match="engine file missing: .*tokenizer.json"):
        load_engine(e.path)


def test_newer_format_version_is_refused(tmp_path, smol_tokenizer_dir):
    e = build_engine(_opts(tmp_path / "e", smol_tokenizer_dir))
    manifest = json.loads((e.path / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (e.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match=f"format version {FORMAT_VERSION + 1} is newer"):
        load_engine(e.path)


def test_existing_output_needs_overwrite(tmp_path, smol_tokenizer_dir):
    out = tmp_path / "e"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(InputError, match="already exists") as info:
        build_engine(_opts(out, smol_tokenizer_dir))
    assert "--overwrite" in info.value.hint
    assert (out / "keep.txt").read_text() == "user data"
    build_engine(_opts(out, smol_tokenizer_dir, overwrite=True))
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]  # no staging or backup left


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_interrupted_build_leaves_nothing(tmp_path, smol_tokenizer_dir, monkeypatch, failure):
    def fail(*args, **kwargs):
        raise failure("stopped during verification")

    monkeypatch.setattr(pipeline, "verify_engine", fail)
    with pytest.raises(failure):
        build_engine(_opts(tmp_path / "e", smol_tokenizer_dir))
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_old_engine(tmp_path, smol_tokenizer_dir, monkeypatch):
    out = tmp_path / "e"
    build_engine(_opts(out, smol_tokenizer_dir))
    before = (out / "manifest.json").read_text()
    monkeypatch.setattr(pipeline, "verify_engine", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        build_engine(_opts(out, smol_tokenizer_dir, overwrite=True))
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]
    load_engine(out)
