"""The kv-layout pass: static slots (CPU and CUDA), paged blocks (CUDA), concat."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from optimizer.core.errors import EngineError, InputError
from optimizer.pipeline import BuildOptions, build_engine
from passes import DEFAULT_PIPELINE, UNFUSED_PIPELINE, PassContext
from passes.kv_layout import METADATA_KEY, PAGED_INPUTS
from passes.pipeline import run_passes
from runtime import Engine, SamplingParams
from runtime.executors import make_executor
from runtime.paged import pack_step
from runtime.session import DecoderSession
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


@pytest.mark.parametrize("options, message, hint", [
    ({"dtype": "fp32"}, "takes float16", "--dtype fp16"),
    ({"dtype": "fp16", "kv_block_size": 24}, "power of two", "16, 32"),
    ({"dtype": "fp16"}, "CUDA-only kernel", "--kv-layout static"),
])
def test_paged_builds_need_fp16_and_cuda(tmp_path, monkeypatch, options, message, hint):
    """Refused before any work, here as on a GPU machine (the providers are pinned to CPU)."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(InputError, match=message) as e:
        build_engine(BuildOptions(out=tmp_path / "e", random_weights=True, config="tiny-llama", quiet=True,
                                  kv_layout="paged", **options))
    assert hint in e.value.hint and not (tmp_path / "e").exists()


def test_the_paged_block_size_defaults_to_what_flash_reads_in_place(tmp_path, tiny_hf_folders):
    """--kv-block-size left out: the block size onnxruntime's flash kernel reads a paged cache
    in place at the model's head size (128 at 65-128), for the graph passes and in the
    manifest's kv_cache section; the options keep None (a build's identity is what was asked
    for, so a report finds the engine again); a size given stays."""
    import dataclasses

    from optimizer.manifest import kv_cache_section
    from optimizer.pipeline import block_size

    _, loaded = captured(tiny_hf_folders["gemma3"], "fp16")
    dims = decoder_dims(loaded.config, loaded.arch)
    opts = BuildOptions(out=tmp_path / "e", random_weights=True, config="tiny-llama", dtype="fp16", kv_layout="paged")
    assert opts.kv_block_size is None
    for head_dim, block in ((64, 256), (128, 128), (256, 64)):
        shaped = dataclasses.replace(dims, head_dim=head_dim)
        assert block_size(opts, shaped) == block
        kv = kv_cache_section(shaped, "fp16", "PagedAttention", "paged", 512, opts)
        assert kv.block_size == block and kv.max_blocks_per_sequence == -(-512 // block)
    given = dataclasses.replace(opts, kv_block_size=16)
    assert block_size(given, dims) == 16
    assert kv_cache_section(dims, "fp16", "PagedAttention", "paged", 512, given).block_size == 16


def test_paged_rewrite_replaces_every_attention_with_paged_attention(tiny_hf_folders, tmp_path):
    """The graph rewrite itself needs no GPU: every GQA becomes PagedAttention over packed
    tokens, the mask and positions leave the interface, block tables enter it, and the
    lm_head reads the rows `logits_indices` names."""
    model, loaded = captured(tiny_hf_folders["gemma3"], "fp16")
    dims = decoder_dims(loaded.config, loaded.arch)
    model, reports = run_passes(model, DEFAULT_PIPELINE, PassContext(dtype="fp16", max_positions=256,
                                                                     kv_layout="paged", kv_block_size=16))
    ops = [n.op_type for n in model.graph]
    assert ops.count("PagedAttention") == dims.num_layers and "GroupQueryAttention" not in ops
    names = [v.name for v in model.graph.inputs]
    assert "attention_mask" not in names and "position_ids" not in names and "logits_from" not in names
    assert set(PAGED_INPUTS) <= set(names) and "logits_indices" in names
    gather = next(n for n in model.graph if n.name == "logits_gather")
    assert gather.op_type == "Gather" and gather.inputs[1].name == "logits_indices"
    cache = next(v for v in model.graph.inputs if v.name == "past_key_values.0.key")
    assert [str(d) for d in cache.shape] == ["num_blocks", "16", str(dims.num_kv_heads), str(dims.head_dim)]
    node = next(n for n in model.graph if n.op_type == "PagedAttention")
    assert node.attributes["local_window_size"].value == 4  # Gemma3's sliding window survives
    tokens = node.inputs[0].producer()  # (B, S, X) -> (tokens, X) with X static: the kernel needs it
    assert tokens.op_type == "Reshape" and tokens.inputs[1].const_value.numpy()[1] > 0
    assert model.metadata_props[METADATA_KEY] == "paged"
    # onnxruntime's CPU build has the op's schema but no kernel: loading passes shape
    # inference and stops at the kernel/type check, which is as far as a CPU can go
    ir.save(model, tmp_path / "paged.onnx")
    with pytest.raises(Exception) as e:
        ort.InferenceSession(str(tmp_path / "paged.onnx"), providers=["CPUExecutionProvider"])
    assert "PagedAttention" in str(e.value) and "ShapeInferenceError" not in str(e.value)


def test_runtime_refuses_paged_engines_on_cpu(static_engine):
    """A paged engine opened on CPU: a clear error before onnxruntime looks for a kernel."""
    import dataclasses

    session = static_engine.session
    paged = dataclasses.replace(session.kv, layout="paged", block_size=16, num_blocks=8, max_blocks_per_sequence=4)
    with pytest.raises(EngineError, match="runs on CUDA only") as e:
        DecoderSession(static_engine.dir.model_path, paged)
    assert "--provider cuda" in e.value.hint and "--kv-layout static" in e.value.hint
    original = session.kv
    try:
        session.kv = paged
        with pytest.raises(EngineError, match="runs on CUDA only"):
            make_executor(session)
        with pytest.raises(EngineError, match="packed tokens and block tables"):
            session.forward(np.zeros((1, 1)), np.ones((1, 1)), np.zeros((1, 1)), [])
    finally:
        session.kv = original


def test_pack_step_packs_tokens_lengths_and_tables():
    feeds = pack_step([([5, 6, 7], 0, [4]), ([9], 20, [0, 2]), ([1, 2], 16, [3, 1, 7])], block_size=16)
    assert feeds["input_ids"].tolist() == [[5, 6, 7, 9, 1, 2]]
    assert feeds["cumulative_sequence_length"].tolist() == [0, 3, 4, 6]
    assert feeds["past_seqlens"].tolist() == [0, 20, 16]
    assert feeds["block_table"].tolist() == [[4, 0, 0], [0, 2, 0], [3, 1, 7]]
    assert feeds["attention_metadata"].tolist() == [3, 21]  # most new tokens, longest sequence
    assert {a.dtype for k, a in feeds.items() if k != "input_ids"} == {np.dtype(np.int32)}


@pytest.mark.parametrize("chunks, message", [
    ([], "at least one sequence"),
    ([([], 0, [1])], "no new tokens"),
    ([([1, 2], 15, [0])], "overflow its 1 blocks"),
])
def test_pack_step_refuses_what_the_kernel_would_misread(chunks, message):
    with pytest.raises(ValueError, match=message):
        pack_step(chunks, block_size=16)


def test_fp8_cache_on_the_paged_layout_needs_no_gpu_to_lower(tiny_hf_folders):
    """--kv-cache-dtype fp8 with the paged layout: every PagedAttention stores float8 E4M3 codes
    (its cache inputs and outputs: the runtime's interface) with the layer's K and V scales on
    the kernel's k_scale / v_scale inputs, PER_TENSOR."""
    import numpy as np

    model, loaded = captured(tiny_hf_folders["llama"], "fp16")
    dims = decoder_dims(loaded.config, loaded.arch)
    scales = tuple((0.01 * (i + 1), 0.02 * (i + 1)) for i in range(dims.num_layers))
    model, reports = run_passes(model, DEFAULT_PIPELINE, PassContext(
        dtype="fp16", max_positions=256, kv_layout="paged", kv_block_size=16, kv_scales=scales,
        kv_cache_dtype="fp8"))
    report = next(r for r in reports if r["name"] == "quantize-kv-cache")
    assert report["changed"] and "fp8 KV cache" in " ".join(report["notes"])
    nodes = [n for n in model.graph if n.op_type == "PagedAttention"]
    assert len(nodes) == dims.num_layers
    fp8 = ir.DataType.FLOAT8E4M3FN
    for v in list(model.graph.inputs) + list(model.graph.outputs):
        if v.name.startswith(("past_key_values.", "present.")):
            assert v.dtype == fp8, v.name
    for node in nodes:
        i = int(node.inputs[3].name.split(".")[1])
        assert node.inputs[14].name == f"kv_scale.{i}.key" and node.inputs[15].name == f"kv_scale.{i}.value"
        assert np.allclose(node.inputs[14].const_value.numpy(), [scales[i][0]])
        assert np.allclose(node.inputs[15].const_value.numpy(), [scales[i][1]])
        assert node.attributes["k_quant_type"].value == node.attributes["v_quant_type"].value == "PER_TENSOR"
        assert node.inputs[16].name == "attention_metadata"  # still the last input


def test_pack_decode_pads_a_bucket_with_placeholders_on_the_scratch_block():
    """A captured paged decode step: real rows first (last token, cached length, blocks, the
    rest of the table the scratch block), then placeholder rows that touch only the scratch
    block; stale values of a larger earlier step are overwritten."""
    from runtime.paged_graphs import pack_decode

    ids, past, table = np.full((1, 8), 99, np.int64), np.full(8, 99, np.int32), np.full((8, 4), 99, np.int32)
    pack_decode([5, 6, 7], [20, 0, 47], [[3, 1], [4], [0, 2, 8]], 4, ids, past, table, scratch=10)
    assert ids[0, :4].tolist() == [5, 6, 7, 0] and past[:4].tolist() == [20, 0, 47, 0]
    assert table[:4].tolist() == [[3, 1, 10, 10], [4, 10, 10, 10], [0, 2, 8, 10], [10, 10, 10, 10]]
    assert ids[0, 4:].tolist() == [99] * 4  # rows past the bucket are not sent
    pack_decode([], [], [], 2, ids, past, table, scratch=10)  # capture: every row a placeholder
    assert ids[0, :2].tolist() == [0, 0] and past[:2].tolist() == [0, 0] and (table[:2] == 10).all()
    with pytest.raises(ValueError, match="do not fit a bucket"):
        pack_decode([1, 2, 3], [0, 0, 0], [[0], [1], [2]], 2, ids, past, table, scratch=10)
    with pytest.raises(ValueError, match="more than a table's 4"):
        pack_decode([1], [0], [[0, 1, 2, 3, 4]], 1, ids, past, table, scratch=10)


def test_paged_graphs_say_why_an_engine_cannot_be_captured():
    from types import SimpleNamespace as NS

    from runtime.paged_graphs import PAGED_GRAPH_INPUTS, unsupported_reason

    def session(inputs=PAGED_GRAPH_INPUTS, max_len=256, logits_shape=(1, "rows", 49152)):
        ort_session = NS(get_inputs=lambda: [NS(name=n) for n in inputs],
                         get_outputs=lambda: [NS(name="logits", shape=list(logits_shape), type="tensor(float16)")])
        return NS(session=ort_session, kv=NS(max_sequence_length=max_len))

    assert unsupported_reason(session()) is None
    assert "attention_metadata" in unsupported_reason(session(inputs=PAGED_GRAPH_INPUTS[:-1]))
    assert "no maximum sequence length" in unsupported_reason(session(max_len=None))
    assert "fixed vocabulary" in unsupported_reason(session(logits_shape=(1, "rows", "vocab")))
