"""The custom-ops pipeline's passes: fuse-swiglu (an fp16 engine's Split -> QuickGelu -> Mul become
our SwiGLU op) and custom-linear (its MatMuls by constant weights become our Linear op, the
weights stored (N, K)); the manifest names the custom-op domain, and the engine computes what the
default pipeline's does (CPU provider here; the CUDA kernels in tests/test_custom_ops.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from optimizer.core.errors import EngineError
from passes._match import CUSTOM_DOMAIN, Deferred, add_initializer
from passes.custom_linear import CustomLinear
from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine, SamplingParams
from runtime.session import make_session_options

LAYERS = 2  # tiny-llama (its lm_head tied to the embedding table)


def build(path, dtype, passes, quant=None):
    return build_engine(BuildOptions(out=path, random_weights=True, config="tiny-llama", dtype=dtype, passes=passes,
                                     max_seq_len=128, quiet=True, quant=quant))


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
    root = tmp_path_factory.mktemp("custom-ops")
    return build(root / "default", "fp16", "default"), build(root / "custom", "fp16", "custom-ops")


def test_each_mlp_activation_becomes_one_swiglu_and_the_manifest_names_the_domain(engines):
    default, custom = engines
    before, after = op_counts(default), op_counts(custom)
    assert "QuickGelu" not in after and "SwiGLU" not in after  # custom-linear folds it into the gate/up GEMV
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


def test_every_linear_becomes_one_of_ours_with_its_norm_and_activation(engines):
    default, custom = engines
    before, after = op_counts(default), op_counts(custom)
    family = {op: after.get(op, 0) for op in ("Linear", "LinearSwiGLU", "NormLinear", "NormLinearSwiGLU")}
    assert "MatMul" not in after and sum(family.values()) == before["MatMul"] == 4 * LAYERS + 1  # qkv, o, gate/up, down
    assert family["NormLinearSwiGLU"] == LAYERS  # each gate/up with the norm before it and the activation after
    assert family["NormLinear"] == LAYERS - 1  # each q/k/v but the first layer's (its norm adds no skip)
    assert before["SkipSimplifiedLayerNormalization"] == 2 * LAYERS
    assert after["SkipSimplifiedLayerNormalization"] == 1  # the final norm: the lm_head reads it through the
    assert "GatherElements" in after  # logits positions, so it computes the rows asked for only
    assert report(custom, "custom-linear")["notes"] == [
        f"{4 * LAYERS + 1} x MatMul -> Linear", f"{LAYERS} x SwiGLU + Linear -> LinearSwiGLU",
        "1 x Linear reading a tied embedding table as it is"]
    assert set(report(custom, "custom-linear-norm")["notes"]) == {
        f"{LAYERS} x norm + LinearSwiGLU -> NormLinearSwiGLU", f"{LAYERS - 1} x norm + Linear -> NormLinear"}


def test_the_tied_head_reads_the_embedding_table_itself(engines):
    default, custom = engines
    assert "Transpose" in op_counts(default) and "Transpose" not in op_counts(custom)  # the tied lm_head's
    model = onnx.load(str(custom.model_path), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    embed = next(n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in weights)
    assert any(n.op_type == "Linear" and n.input[1] == embed.input[0] for n in model.graph.node)  # one (V, H) table
    assert not any(name.endswith(".nk") and name[:-3] in weights for name in weights)  # no (K, N) copy kept
    size = [sum(f.stat().st_size for f in e.path.iterdir()) for e in engines]
    assert abs(size[1] - size[0]) < 4096  # the same weights, none twice


def test_the_lowering_keeps_a_streamed_weight_lazy():
    k, n = 16, 8
    weight = np.arange(k * n, dtype=np.float16).reshape(k, n)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT16), shape=ir.Shape([1, 1, k]))
    graph = ir.Graph([x], [], nodes=[], name="g")
    w = add_initializer(graph, "proj.weight", Deferred((k, n), np.dtype(np.float16), lambda: weight))
    matmul = ir.node("MatMul", [x, w], name="proj")
    graph.append(matmul)
    graph.outputs.append(matmul.outputs[0])
    model = ir.Model(graph, ir_version=10)
    assert CustomLinear("fp16")(model).modified
    (linear,) = list(model.graph)
    assert (linear.op_type, linear.domain) == ("Linear", CUSTOM_DOMAIN)
    stored = linear.inputs[1].const_value
    assert isinstance(stored, ir.LazyTensor) and stored.shape == (n, k)
    np.testing.assert_array_equal(stored.numpy(), weight.T)


INT4_FORMATS = {  # genai's format (symmetric blocks of 32, the lm_head and its tied table 4-bit), and
    "genai": dict(method="rtn", bits=4, group_size=32, lm_head_bits=4),  # plain --quant int4's
    "default": dict(method="rtn", bits=4, group_size=64, symmetric=False),  # (zero points; the lm_head float)
}


@pytest.mark.parametrize("fmt", sorted(INT4_FORMATS))
def test_int4_engines_take_our_4bit_ops_with_their_folds_and_decode_the_same_tokens(tmp_path, fmt):
    from calibration import quant_config

    quant = quant_config(**INT4_FORMATS[fmt])
    default = build(tmp_path / "default", "fp16", "default", quant)
    custom = build(tmp_path / "custom", "fp16", "custom-ops", quant)
    before, after = op_counts(default), op_counts(custom)
    ops = ("LinearInt4", "LinearInt4SwiGLU", "NormLinearInt4", "NormLinearInt4SwiGLU", "LinearInt4NormLinearInt4",
           "LinearInt4NormLinearInt4SwiGLU")
    family = {op: after.get(op, 0) for op in ops}
    linears = sum(n * op.count("Int4") for op, n in family.items())
    assert "MatMulNBits" not in after and linears == before["MatMulNBits"]
    # each layer's o projection with the gate/up after its norm, each down but the last with the next
    # layer's q/k/v; the first q/k/v (after the first norm, not a skip norm), the last down and
    # genai's 4-bit lm_head alone
    assert family["LinearInt4NormLinearInt4SwiGLU"] == LAYERS and family["LinearInt4NormLinearInt4"] == LAYERS - 1
    assert family["LinearInt4"] == 2 + (fmt == "genai")
    assert family["NormLinearInt4"] == family["NormLinearInt4SwiGLU"] == 0
    notes = report(custom, "custom-linear")["notes"]
    assert f"{before['MatMulNBits']} x MatMulNBits -> LinearInt4" in notes
    assert f"{LAYERS} x SwiGLU + LinearInt4 -> LinearInt4SwiGLU" in notes
    assert set(report(custom, "custom-linear-chain")["notes"]) == {
        f"{LAYERS} x chain + NormLinearInt4SwiGLU -> LinearInt4NormLinearInt4SwiGLU",
        f"{LAYERS - 1} x chain + NormLinearInt4 -> LinearInt4NormLinearInt4"}
    model = onnx.load(str(custom.model_path), load_external_data=False)
    names = {i.name for i in model.graph.initializer}
    assert all(name in names for n in model.graph.node if "Int4" in n.op_type
               for name in n.input[-3 if len(n.input) > 4 else -2:] if name)  # the same arrays, read as they are
    size = [sum(f.stat().st_size for f in e.path.iterdir()) for e in (default, custom)]
    assert abs(size[1] - size[0]) < 4096  # no weight stored twice
    assert custom.manifest["verification"]["top1_agreement"] == 1.0
    fmt_ours = custom.manifest["quantization"]["format"]
    assert fmt_ours == f"optimizer.ops LinearInt4 family ({linears} linears, MatMulNBits' layout, fp32 sums)"
    assert default.manifest["quantization"]["format"] == "MatMulNBits"
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    prompt = [1, 17, 230, 5, 99, 42]
    tokens = [Engine.load(e.path).generate_ids(prompt, params).token_ids for e in (default, custom)]
    assert tokens[0] == tokens[1]


def matmul_nbits_model(bits: int, block: int, zeros_dtype=ir.DataType.UINT8, k: int = 64, n: int = 8) -> ir.Model:
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT16), shape=ir.Shape([1, 1, k]))
    graph = ir.Graph([x], [], nodes=[], name="g")
    blocks = k // block
    codes = add_initializer(graph, "proj.qweight", np.zeros((n, blocks, block * bits // 8), np.uint8))
    scales = add_initializer(graph, "proj.scales", np.ones((n, blocks), np.float16))
    zeros = add_initializer(graph, "proj.qzeros", np.zeros((n, (blocks + 1) // 2), zeros_dtype.numpy()))
    node = ir.node("MatMulNBits", [x, codes, scales, zeros], {"K": k, "N": n, "bits": bits, "block_size": block},
                   domain="com.microsoft", name="proj")
    graph.append(node)
    graph.outputs.append(node.outputs[0])
    return ir.Model(graph, ir_version=10)


def test_a_4bit_matmulnbits_becomes_linear_int4_over_the_same_arrays():
    model = matmul_nbits_model(4, 32)
    pass_ = CustomLinear("fp16")
    assert pass_(model).modified and pass_.notes == ["1 x MatMulNBits -> LinearInt4"]
    (node,) = list(model.graph)
    assert (node.op_type, node.domain, node.attributes["block_size"].value) == ("LinearInt4", CUSTOM_DOMAIN, 32)
    assert [v.name for v in node.inputs] == ["x", "proj.qweight", "proj.scales", "proj.qzeros"]


@pytest.mark.parametrize("bits,block,zeros,why", [
    (8, 32, ir.DataType.UINT8, "8-bit weights (LinearInt4 takes 4)"),
    (4, 16, ir.DataType.UINT8, "block 16, not a multiple of 32"),
    (4, 32, ir.DataType.FLOAT16, "FLOAT16 zero points, not packed uint8"),
])
def test_matmulnbits_the_op_does_not_take_is_left_with_the_reason(bits, block, zeros, why):
    model = matmul_nbits_model(bits, block, zeros)
    pass_ = CustomLinear("fp16")
    assert not pass_(model).modified
    assert [n.op_type for n in model.graph] == ["MatMulNBits"] and pass_.notes == [f"1 x left: {why}"]


def test_fp32_engines_are_left_as_they_are_with_the_reason(tmp_path):
    engine = build(tmp_path / "fp32", "fp32", "custom-ops")
    assert {"SwiGLU", "Linear", "NormLinear", "CachedAttention"}.isdisjoint(op_counts(engine))
    assert "custom_ops" not in engine.manifest
    for name in ("fuse-swiglu", "custom-linear", "custom-linear-norm", "custom-attention"):
        fused = report(engine, name)
        assert not fused["changed"]
        assert any("float16" in note for note in fused["notes"]), fused["notes"]


def test_an_engine_asking_for_unknown_custom_ops_is_refused():
    with pytest.raises(EngineError, match="custom ops of \\['other.ops'\\]"):
        make_session_options(None, custom_ops=("other.ops",))


def linear_then_norm_model(h_as_skip: bool, h_read_elsewhere: bool, blocks: tuple[int, int] = (32, 32)) -> ir.Model:
    """LinearInt4(x) -> h; NormLinearInt4(h, skip, gamma, W) (h as its x, or as its skip)."""
    k, n = 64, 32
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT16), shape=ir.Shape([1, 1, k]))
    skip = ir.Value(name="skip", type=ir.TensorType(ir.DataType.FLOAT16), shape=ir.Shape([1, 1, n]))
    graph = ir.Graph([x, skip], [], nodes=[], name="g")
    codes_a = add_initializer(graph, "a.codes", np.zeros((n, k // 32, 16), np.uint8))
    scales_a = add_initializer(graph, "a.scales", np.ones((n, k // 32), np.float16))
    gamma = add_initializer(graph, "gamma", np.ones(n, np.float16))
    codes = add_initializer(graph, "b.codes", np.zeros((8, n // 32, 16), np.uint8))
    scales = add_initializer(graph, "b.scales", np.ones((8, n // 32), np.float16))
    first = ir.node("LinearInt4", [x, codes_a, scales_a], {"block_size": blocks[0]}, domain=CUSTOM_DOMAIN,
                    num_outputs=2, name="o")
    h = first.outputs[0]
    norm = ir.node("NormLinearInt4", [skip, h, gamma, codes, scales] if h_as_skip else [h, skip, gamma, codes, scales],
                   {"block_size": blocks[1], "epsilon": 1e-5}, domain=CUSTOM_DOMAIN, num_outputs=3, name="qkv")
    graph.extend([first, norm])
    graph.outputs.extend([norm.outputs[0], norm.outputs[1], *([h] if h_read_elsewhere else [])])
    return ir.Model(graph, ir_version=10)


@pytest.mark.parametrize("h_as_skip", [False, True])
def test_custom_linear_chain_folds_a_4bit_linear_into_the_norm_linear_it_feeds(h_as_skip):
    """As the norm's x or its skip (x + skip is the same sum): the chain's x is the linear's input,
    its skip the norm's other input; the first weights' zero points absent (an empty input)."""
    model = linear_then_norm_model(h_as_skip, False)
    chain = CustomLinear("fp16", lower=False, folds=("chain",))
    assert chain(model).modified
    (node,) = list(model.graph)
    assert (node.op_type, node.domain) == ("LinearInt4NormLinearInt4", CUSTOM_DOMAIN)
    names = [v.name if v is not None else "" for v in node.inputs]
    assert names == ["x", "a.codes", "a.scales", "", "skip", "gamma", "b.codes", "b.scales", ""]
    assert [o.name for o in model.graph.outputs] == [node.outputs[0].name, node.outputs[1].name]
    assert chain.notes == ["1 x chain + NormLinearInt4 -> LinearInt4NormLinearInt4"]


@pytest.mark.parametrize("read_elsewhere,blocks,why", [
    (True, (32, 32), "o: its output feeds more than the norm"),
    (False, (32, 64), "o: blocks of 32, the norm's linear's 64")])
def test_a_chain_that_cannot_fold_is_left_with_the_reason(read_elsewhere, blocks, why):
    model = linear_then_norm_model(False, read_elsewhere, blocks)
    chain = CustomLinear("fp16", lower=False, folds=("chain",))
    assert not chain(model).modified
    assert [n.op_type for n in model.graph] == ["LinearInt4", "NormLinearInt4"]
    assert chain.notes == [f"1 x left: chain not folded: {why.split(': ', 1)[1]}"]
