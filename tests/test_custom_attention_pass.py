"""The custom-attention pass (custom-ops pipeline): an fp16 static-layout engine's
GroupQueryAttention nodes become our CachedAttention, the manifest says so, and the engine serves
what the default pipeline's does (CPU provider here: single requests, and batches whose rows have
different lengths through the continuous-batching loop; the CUDA kernel in
tests/test_custom_ops_attention.py and tests/test_cuda_graph.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from passes._match import CUSTOM_DOMAIN, MS_DOMAIN, add_initializer
from passes.custom_attention import HEAD_SIZES, CustomAttention
from passes.kv_layout import METADATA_KEY
from runtime import Engine, SamplingParams, custom_ops
from tests.test_custom_ops_passes import LAYERS, build, op_counts, report


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom-attention")
    return build(root / "default", "fp16", "default"), build(root / "custom", "fp16", "custom-ops")


def test_every_layers_attention_becomes_ours_and_the_manifest_says_so(engines):
    default, custom = engines
    assert op_counts(default)["GroupQueryAttention"] == LAYERS
    after = op_counts(custom)
    assert "GroupQueryAttention" not in after and after["CachedAttention"] == LAYERS
    assert report(custom, "custom-attention")["notes"] == [f"{LAYERS} x GroupQueryAttention -> CachedAttention"]
    kv = custom.manifest["kv_cache"]
    assert (kv["attention"], kv["layout"], kv["padding"]) == ("CachedAttention", "static", "right")
    assert custom.manifest["verification"]["top1_agreement"] == 1.0  # verification runs it concatenating


def test_batches_of_rows_of_different_lengths_decode_the_default_engines_tokens(engines):
    """Right-padded batched prefills, then decode steps over rows of different lengths, written in
    place: the tokens of the default engine's GroupQueryAttention."""
    prompts = [[1, 17, 230, 5, 99, 42], [1, 8], [1, 300, 301, 302, 303, 304, 305, 306, 307, 9], [1, 55, 56]]
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    tokens = [[r.token_ids for r in Engine.load(e.path).generate_batch(prompts, params)] for e in engines]
    assert tokens[0] == tokens[1]
    single = Engine.load(engines[1].path).generate_ids(prompts[2], params).token_ids
    assert single == tokens[1][2]


def gqa_model(head_dim: int = 32, rotary_dim: int | None = None, layout: str = "static", dtype=ir.DataType.FLOAT16,
              **attributes) -> ir.Model:
    """One GroupQueryAttention node over graph inputs, with constant rotary tables."""
    heads, kv_heads = 4, 2
    half = ir.TensorType(dtype)
    query = ir.Value(name="query", type=half, shape=ir.Shape([1, 1, (heads + 2 * kv_heads) * head_dim]))
    past = [ir.Value(name=n, type=half, shape=ir.Shape(["batch", kv_heads, "kv_capacity", head_dim]))
            for n in ("past_key", "past_value")]
    int32 = ir.TensorType(ir.DataType.INT32)
    seqlens = ir.Value(name="seqlens_k", type=int32, shape=ir.Shape([1]))
    total = ir.Value(name="total", type=int32, shape=ir.Shape([]))
    graph = ir.Graph([query, *past, seqlens, total], [], nodes=[], name="g")
    width = (rotary_dim or head_dim) // 2
    tables = [add_initializer(graph, n, np.zeros((64, width), dtype.numpy())) for n in ("cos", "sin")]
    attrs = {"num_heads": heads, "kv_num_heads": kv_heads, "do_rotary": 1, "rotary_interleaved": 0, "scale": 0.0,
             "softcap": 0.0, "local_window_size": -1, **attributes}
    node = ir.node("GroupQueryAttention", [query, None, None, *past, seqlens, total, *tables], attrs,
                   domain=MS_DOMAIN, num_outputs=3, name="layers.0/gqa")
    graph.append(node)
    graph.outputs.extend(node.outputs)
    model = ir.Model(graph, ir_version=10)
    model.metadata_props[METADATA_KEY] = layout
    return model


def test_a_node_becomes_cached_attention_with_its_attributes_and_total_length():
    model = gqa_model(softcap=30.0, local_window_size=8)
    pass_ = CustomAttention("fp16")
    assert pass_(model).modified and pass_.notes == ["1 x GroupQueryAttention -> CachedAttention"]
    (node,) = list(model.graph)
    assert (node.op_type, node.domain) == ("CachedAttention", CUSTOM_DOMAIN)
    assert [v.name for v in node.inputs] == ["query", "past_key", "past_value", "seqlens_k", "total", "cos", "sin"]
    attrs = {k: a.value for k, a in node.attributes.items()}
    assert attrs == {"num_heads": 4, "kv_num_heads": 2, "scale": 0.0, "softcap": 30.0, "local_window_size": 8}
    assert list(model.graph.outputs) == list(node.outputs)  # present K/V stay the graph's outputs
    assert model.opset_imports[CUSTOM_DOMAIN] == 1


@pytest.mark.parametrize("model_args, why", [
    (dict(do_rotary=0), "not its own half-split rotary (do_rotary 1, rotary_interleaved 0)"),
    (dict(rotary_interleaved=1), "not its own half-split rotary (do_rotary 1, rotary_interleaved 0)"),
    (dict(head_dim=48), "head size 48, none of 16, 32, 64, 80, 96, 128, 256 (the CUDA kernel's)"),
    (dict(rotary_dim=16), "the rotary tables do not cover the whole head (partial rotary)"),
    (dict(smooth_softmax=1), "smooth softmax or score outputs"),
])
def test_a_node_the_op_does_not_take_stays_with_the_reason(model_args, why):
    model = gqa_model(**model_args)
    pass_ = CustomAttention("fp16")
    assert not pass_(model).modified
    assert [n.op_type for n in model.graph] == ["GroupQueryAttention"] and pass_.notes == [f"1 x left: {why}"]


def test_the_pass_takes_the_head_sizes_the_cuda_kernel_is_compiled_for():
    source = (Path(custom_ops.__file__).parent / "attention.cu").read_text()
    compiled = re.search(r"using Supported = HeadSizes<([\d, ]+)>;", source).group(1)
    assert tuple(int(n) for n in compiled.split(",")) == HEAD_SIZES


@pytest.mark.parametrize("layout, dtype, note", [
    ("paged", "fp16", "the paged KV-cache layout (the op writes the static layout's cache in place)"),
    ("concat", "fp16", "the concat KV-cache layout (the op writes the static layout's cache in place)"),
    ("static", "fp32", "a FLOAT engine: the op takes float16"),
])
def test_other_layouts_and_dtypes_are_left_with_the_reason(layout, dtype, note):
    model = gqa_model(layout=layout)
    pass_ = CustomAttention(dtype)
    assert not pass_(model).modified and pass_.notes == [note]


def test_speculative_verification_of_several_rows_is_one_call_with_the_tokens_of_plain_decoding(engines,
                                                                                              monkeypatch):
    """CachedAttention takes several rows of several new tokens: every drafting sequence of a step
    is verified in one call (rows padded to the longest draft), and greedy output is plain decoding's."""
    from runtime.executors import StaticExecutor
    from runtime.speculative import SpeculativeConfig

    prompts = [[1, 5, 6, 7, 5, 6, 7, 5, 6], [1, 9, 10, 9, 10, 9], [1, 40, 41, 42, 43, 40, 41], [1, 70, 71, 70]]
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    engine = Engine.load(engines[1].path)
    plain = [r.token_ids for r in engine.generate_batch(prompts, params)]
    calls = {"rows": 0, "row": 0}
    for name in calls:
        method = getattr(StaticExecutor, f"_verify_{name}")
        monkeypatch.setattr(StaticExecutor, f"_verify_{name}",
                            lambda self, *a, _m=method, _n=name: calls.__setitem__(_n, calls[_n] + 1) or _m(self, *a))
    spec = SpeculativeConfig("ngram", 4, ngram_max=2, ngram_min=1, max_batch=4)
    assert [r.token_ids for r in engine.generate_batch(prompts, params, speculative=spec)] == plain
    assert calls["rows"] > 0 and calls["row"] == 0
