"""The kv-layout pass: static slots (CPU and CUDA), paged blocks (CUDA), concat."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from optimizer.errors import EngineError, InputError
from optimizer.pipeline import BuildOptions, build_engine
from passes import DEFAULT_PIPELINE, UNFUSED_PIPELINE, PassContext
from passes.kv_layout import METADATA_KEY
from passes.pipeline import run_passes
from runtime import Engine, SamplingParams
from runtime.executors import make_executor
from optimizer.capture import decoder_dims
from tests.pass_helpers import captured


@pytest.fixture(scope="module")
def static_engine(tmp_path_factory):
    out = tmp_path_factory.mktemp("kv") / "engine"
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-qwen2", quiet=True,
                              kv_slots=3, kv_capacity=64))
    return Engine.load(out)


def test_static_layout_interface_and_manifest(static_engine):
    kv = static_engine.manifest["kv_cache"]
    assert (kv["layout"], kv["slots"], kv["slot_capacity"], kv["attention"]) == ("static", 3, 64, "GroupQueryAttention")
    model = ir.load(static_engine.dir.model_path)
    names = [v.name for v in model.graph.inputs]
    assert "position_ids" not in names and "attention_mask" in names  # GQA takes positions from the lengths
    past = next(v for v in model.graph.inputs if v.name == "past_key_values.0.key")
    present = next(v for v in model.graph.outputs if v.name == "present.0.key")
    assert str(past.shape[2]) == "kv_capacity" and str(present.shape[2]) == "kv_capacity"
    assert model.metadata_props[METADATA_KEY] == "static"
    report = {p["name"]: p for p in static_engine.manifest["passes"]}["kv-layout"]
    assert report["changed"] and "static layout" in report["notes"][0]


def test_static_engine_batches_within_its_slots(static_engine):
    executor = make_executor(static_engine.session)
    assert executor.pool.total == 3 and executor.capacity == 64
    prompts = [[5, 6, 7], [9] * 20, [3, 4]]
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    alone = [static_engine.generate_ids(p, params).token_ids for p in prompts]
    batched = [r.token_ids for r in static_engine.generate_batch(prompts, params)]
    assert batched == alone


def test_concat_layout_on_request(tmp_path):
    engine = build_engine(BuildOptions(out=tmp_path / "e", random_weights=True, config="tiny-llama", quiet=True,
                                       kv_layout="concat"))
    kv = engine.manifest["kv_cache"]
    assert kv["layout"] == "concat" and kv["attention"] == "GroupQueryAttention" and "slots" not in kv
    loaded = Engine.load(tmp_path / "e")
    assert "position_ids" in loaded.session.input_names
    prompts = [[5, 6, 7], [9, 8]]
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    assert [r.token_ids for r in loaded.generate_batch(prompts, params)] == \
        [loaded.generate_ids(p, params).token_ids for p in prompts]


def test_unfused_engines_stay_concat_and_still_batch(tmp_path):
    engine = build_engine(BuildOptions(out=tmp_path / "e", random_weights=True, config="tiny-llama", quiet=True,
                                       passes=UNFUSED_PIPELINE))
    assert engine.manifest["kv_cache"]["layout"] == "concat"
    loaded = Engine.load(tmp_path / "e")
    prompts = [[5, 6, 7], [9, 8]]
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    assert [r.token_ids for r in loaded.generate_batch(prompts, params)] == \
        [loaded.generate_ids(p, params).token_ids for p in prompts]


@pytest.mark.parametrize("options, message", [
    ({"kv_layout": "static", "passes": UNFUSED_PIPELINE}, "needs fused attention"),
    ({"kv_layout": "static", "passes": ("fuse-rms-norm", "fuse-attention")}, "needs the kv-layout pass"),
    ({"kv_layout": "diagonal"}, "unknown KV-cache layout"),
    ({"kv_slots": 0}, "--kv-slots must be positive"),
    ({"kv_capacity": 4096, "max_seq_len": 128}, "exceeds --max-seq-len"),
])
def test_bad_layout_options_fail_before_any_work(tmp_path, options, message):
    with pytest.raises(InputError, match=message):
        build_engine(BuildOptions(out=tmp_path / "e", random_weights=True, config="tiny-llama", quiet=True,
                                  **options))
    assert not (tmp_path / "e").exists()


def test_paged_layout_is_refused_with_the_reason(tmp_path):
    with pytest.raises(InputError, match="paged KV-cache layout cannot be built yet") as e:
        build_engine(BuildOptions(out=tmp_path / "e", random_weights=True, config="tiny-llama", quiet=True,
                                  kv_layout="paged", dtype="fp16"))
    assert "--kv-layout static" in e.value.hint and not (tmp_path / "e").exists()


def test_paged_rewrite_replaces_every_attention_with_paged_attention(tiny_hf_folders):
    """The graph rewrite itself needs no GPU: every GQA becomes PagedAttention over packed
    tokens, the mask and positions leave the interface, block tables enter it."""
    model, loaded = captured(tiny_hf_folders["gemma3"])
    dims = decoder_dims(loaded.config, loaded.arch)
    model, reports = run_passes(model, DEFAULT_PIPELINE, PassContext(max_positions=256, kv_layout="paged",
                                                                     kv_block_size=8))
    ops = [n.op_type for n in model.graph]
    assert ops.count("PagedAttention") == dims.num_layers and "GroupQueryAttention" not in ops
    names = [v.name for v in model.graph.inputs]
    assert "attention_mask" not in names and "position_ids" not in names
    assert {"cumulative_sequence_length", "past_seqlens", "block_table"} <= set(names)
    cache = next(v for v in model.graph.inputs if v.name == "past_key_values.0.key")
    assert [str(d) for d in cache.shape] == ["num_blocks", "8", str(dims.num_kv_heads), str(dims.head_dim)]
    node = next(n for n in model.graph if n.op_type == "PagedAttention")
    assert node.attributes["local_window_size"].value == 4  # Gemma3's sliding window survives
    assert model.metadata_props[METADATA_KEY] == "paged"


def test_runtime_refuses_paged_engines_on_cpu(static_engine):
    import dataclasses

    session = static_engine.session
    paged = dataclasses.replace(session.kv, layout="paged", block_size=16, num_blocks=8)
    original = session.kv
    try:
        session.kv = paged
        with pytest.raises(EngineError, match="paged KV-cache layout has no executor"):
            make_executor(session)
    finally:
        session.kv = original
