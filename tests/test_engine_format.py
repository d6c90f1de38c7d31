"""The typed engine format (optimizer.core.engine_format): the KV-cache section written by the
builder and read by the runtime, and engines of the previous format version."""

from __future__ import annotations

import json

import pytest

from optimizer.core.artifact import load_engine
from optimizer.core.engine_format import FORMAT_VERSION, KvCacheSpec
from optimizer.core.errors import EngineError
from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine, SamplingParams

NAMES = ("past.{i}.key", "past.{i}.value", "present.{i}.key", "present.{i}.value")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return build_engine(BuildOptions(out=tmp_path_factory.mktemp("fmt") / "engine", random_weights=True,
                                     config="tiny-llama", kv_slots=2, kv_capacity=32, quiet=True))


def test_the_manifest_section_is_the_spec_written_out(engine):
    spec = engine.kv_cache
    assert (spec.layout, spec.slots, spec.slot_capacity, spec.padding) == ("static", 2, 32, "right")
    assert spec.to_manifest() == engine.manifest["kv_cache"]
    assert "block_size" not in engine.manifest["kv_cache"]  # sizes of other layouts are not written


def test_format_1_paged_sections_name_their_slots_max_sequences():
    v1 = {"layout": "paged", "num_layers": 2, "num_kv_heads": 1, "head_dim": 8, "dtype": "fp16",
          "past_key": NAMES[0], "past_value": NAMES[1], "present_key": NAMES[2], "present_value": NAMES[3],
          "attention": "PagedAttention", "max_sequence_length": 64, "sliding_windows": [None, None],
          "padding": "right", "block_size": 16, "num_blocks": 8, "max_sequences": 4, "max_blocks_per_sequence": 4}
    spec = KvCacheSpec.from_manifest(v1, version=1)
    assert spec.slots == 4 and spec.sliding_windows == (None, None)
    assert spec.to_manifest()["slots"] == 4 and "max_sequences" not in spec.to_manifest()


def test_sections_this_runtime_cannot_read_are_refused():
    base = dict(num_layers=1, num_kv_heads=1, head_dim=8, dtype="fp32", past_key=NAMES[0], past_value=NAMES[1],
                present_key=NAMES[2], present_value=NAMES[3])
    with pytest.raises(EngineError, match="does not know: ring_size"):
        KvCacheSpec.from_manifest({**base, "layout": "static", "slots": 1, "slot_capacity": 8, "ring_size": 3})
    with pytest.raises(EngineError, match="static KV-cache section lacks slot_capacity"):
        KvCacheSpec.from_manifest({**base, "layout": "static", "slots": 1})
    with pytest.raises(EngineError, match="layout 'ring' is not supported"):
        KvCacheSpec.from_manifest({**base, "layout": "ring"})
    with pytest.raises(EngineError, match="incomplete"):
        KvCacheSpec.from_manifest({"layout": "concat"})


def test_an_engine_of_the_previous_format_version_loads_and_runs(engine, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(engine.path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION == 2
    manifest["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    params = SamplingParams(max_new_tokens=5, ignore_eos=True)
    want = Engine.load(engine.path).generate_ids([5, 6, 7], params).token_ids
    assert load_engine(old).format_version == 1
    assert Engine.load(old).generate_ids([5, 6, 7], params).token_ids == want
    manifest["format_version"] = 0
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="format version 0 is no longer read"):
        load_engine(old)
