"""The sampler graphs of `runtime.device_sampler`, built from code (that module's docstring says
what each computes). Apart from it so that importing the runtime does not import onnx: `import
onnx` imports ml_dtypes, about 0.8 s of a process's start on the 2-core machine, which every CLI
command and engine load paid before it needed a graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from runtime.sampler_spec import DEFAULT_CANDIDATES, KINDS, OUTPUT_TYPES, PARAM_TYPES, output_names
from runtime.sampling import U_MAX

GROUP = 256  # long rows' inverse CDF: weights per group of the first level
SAMPLER_OPSET = 21
_LOGITS_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(value), name)


class _Graph:
    """A tiny node list builder: `g.op("Exp", x)` returns the output name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._n = 0

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs) -> "str | list[str]":
        self._n += 1
        names = [f"{op_type.lower()}_{self._n}" + (f"_{i}" if outputs > 1 else "") for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, name: str, value) -> str:
        self.initializers.append(_const(name, value))
        return name


def _head(g: _Graph, logits_dtype: np.dtype) -> str:
    """logits (B, 1, V) -> (B, V) float32."""
    flat = g.op("Squeeze", "logits", g.const("axis1", np.asarray([1], np.int64)))
    return flat if np.dtype(logits_dtype) == np.float32 else g.op("Cast", flat, to=TensorProto.FLOAT)


def _logprob(g: _Graph, probs: str, tokens: str) -> str:
    """log of the probability at each row's token."""
    chosen = g.op("GatherElements", probs, g.op("Unsqueeze", tokens, "axis1"), axis=1)  # (B, 1)
    return g.op("Squeeze", g.op("Log", chosen), "axis1")


def _inverse_cdf(g: _Graph, weights: str, u_col: str, n: int, tag: str) -> str:
    """(B, n) non-negative weights, not all zero -> (B,) int64: numpy's
    searchsorted(cdf / cdf[-1], u, side='right'), the count of cumulative sums <= u * total.

    onnxruntime's CUDA CumSum for floats walks each output's whole prefix (quadratic in the
    row length), so long rows are done in two levels: the cumulative mass of groups of
    `GROUP` weights picks the group, then the cumulative mass inside that group picks the
    token. Each level's threshold stays below its level's last cumulative sum, so the lookup
    always lands on a token of non-zero weight."""
    axis = g.const(f"{tag}_axis", np.asarray(1, np.int64))
    if n <= GROUP:
        cdf = g.op("CumSum", weights, axis)
        total = g.op("Gather", cdf, g.const(f"{tag}_last", np.asarray([n - 1], np.int64)), axis=1)  # (B, 1)
        return _count_at_most(g, cdf, g.op("Mul", u_col, total), n - 1, tag)
    groups = -(-n // GROUP)
    padded = g.op("Pad", weights, g.const(f"{tag}_pads", np.asarray([0, 0, 0, groups * GROUP - n], np.int64)))
    blocks = g.op("Reshape", padded, g.const(f"{tag}_blocks", np.asarray([0, groups, GROUP], np.int64)))
    sums = g.op("ReduceSum", blocks, g.const(f"{tag}_axis2", np.asarray([2], np.int64)), keepdims=0)  # (B, G)
    group_cdf = g.op("CumSum", sums, axis)
    total = g.op("Gather", group_cdf, g.const(f"{tag}_glast", np.asarray([groups - 1], np.int64)), axis=1)
    threshold = g.op("Mul", u_col, total)  # (B, 1)
    group = _count_at_most(g, group_cdf, threshold, groups - 1, tag + "_g")  # (B,)
    # mass before the group, and the group's own weights
    prev = g.op("Max", g.op("Sub", group, g.const(f"{tag}_one", np.asarray(1, np.int64))),
                g.const(f"{tag}_zero", np.asarray(0, np.int64)))
    before = g.op("Where", g.op("Greater", g.op("Unsqueeze", group, "axis1"), f"{tag}_zero"),
                  g.op("GatherElements", group_cdf, g.op("Unsqueeze", prev, "axis1"), axis=1),
                  g.const(f"{tag}_zero_f", np.asarray([[0.0]], np.float32)))  # (B, 1)
    index = g.op("Expand", g.op("Unsqueeze", group, g.const(f"{tag}_axes12", np.asarray([1, 2], np.int64))),
                 g.const(f"{tag}_gshape", np.asarray([1, 1, GROUP], np.int64)))  # (B, 1, GROUP)
    inner = g.op("Squeeze", g.op("GatherElements", blocks, index, axis=1), "axis1")  # (B, GROUP)
    inner_cdf = g.op("CumSum", inner, axis)
    inner_total = g.op("Gather", inner_cdf, g.const(f"{tag}_ilast", np.asarray([GROUP - 1], np.int64)), axis=1)
    local = g.op("Min", g.op("Sub", threshold, before),
                 g.op("Mul", inner_total, g.const(f"{tag}_below", np.asarray(U_MAX, np.float32))))
    pos = _count_at_most(g, inner_cdf, local, GROUP - 1, tag + "_i")
    token = g.op("Add", g.op("Mul", group, g.const(f"{tag}_group", np.asarray(GROUP, np.int64))), pos)
    return g.op("Min", token, g.const(f"{tag}_max", np.asarray(n - 1, np.int64)))


def _count_at_most(g: _Graph, cdf: str, threshold: str, last: int, tag: str) -> str:
    """count(cdf <= threshold) per row, at most `last`."""
    below = g.op("LessOrEqual", cdf, threshold)
    count = g.op("ReduceSum", g.op("Cast", below, to=TensorProto.INT64), "axis1", keepdims=0)
    return g.op("Min", count, g.const(f"{tag}_cap", np.asarray(last, np.int64)))


def sampler_model(vocab: int, kind: str = "sample", logits_dtype=np.float32,
                  candidates: int = DEFAULT_CANDIDATES) -> onnx.ModelProto:
    """The ONNX sampler graph (see the module docstring); `kind` is one of KINDS."""
    if kind not in KINDS:
        raise ValueError(f"sampler kind must be one of {KINDS}, got {kind!r}")
    g = _Graph()
    raw = _head(g, logits_dtype)
    greedy = g.op("ArgMax", raw, axis=1, keepdims=0)  # (B,)
    inputs = [helper.make_tensor_value_info("logits", _LOGITS_TYPES[np.dtype(logits_dtype)], ["batch", 1, vocab])]
    if kind == "greedy":
        g.op("Identity", greedy)
        g.nodes[-1].output[0] = "next_tokens"
    else:
        k = min(candidates, vocab)
        for name, dtype in PARAM_TYPES.items():
            inputs.append(helper.make_tensor_value_info(name, _onnx_type(dtype), ["batch"]))
        col = {n: g.op("Unsqueeze", n, "axis1") for n in PARAM_TYPES}  # (B, 1)
        zero_i, zero_f = g.const("zero_i", np.asarray(0, np.int64)), g.const("zero_f", np.asarray(0.0, np.float32))
        # probabilities at temperature T (Softmax: onnxruntime's CUDA ReduceMax / ReduceLogSumExp
        # take milliseconds on vocabulary-wide rows, its Softmax microseconds)
        temp = g.op("Max", col["temperature"], g.const("min_temp", np.asarray(1e-6, np.float32)))
        probs = g.op("Softmax", g.op("Div", raw, temp), axis=1)  # (B, V)
        full_total = g.op("ReduceSum", probs, "axis1", keepdims=1)  # (B, 1), 1 up to rounding
        full_token = _inverse_cdf(g, probs, col["uniform"], vocab, "full")
        is_greedy = g.op("Equal", "temperature", zero_f)
        is_full = g.op("And", g.op("Not", g.op("Greater", "top_k", zero_i)),
                       g.op("GreaterOrEqual", "top_p", g.const("one_f", np.asarray(1.0, np.float32))))
        if kind == "full":
            g.op("Where", is_greedy, greedy, full_token)
            g.nodes[-1].output[0] = "next_tokens"
            g.op("Not", g.op("Or", is_greedy, is_full))  # a cut: the candidates' graph, or the host
            g.nodes[-1].output[0] = "fallback"
        else:
            _candidates(g, probs, full_total, full_token, greedy, is_greedy, is_full, col, k, vocab)
        # logprobs of the raw logits (temperature 1)
        _logprob(g, g.op("Softmax", raw, axis=1), "next_tokens")
        g.nodes[-1].output[0] = "logprobs"
    graph = helper.make_graph(g.nodes, f"sampler_{kind}", inputs,
                              [helper.make_tensor_value_info(n, _onnx_type(OUTPUT_TYPES[n]), ["batch"])
                               for n in output_names(kind)],
                              initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", SAMPLER_OPSET)],
                              producer_name="optimizer.runtime.sampler_graph")
    model.ir_version = 10
    return model


def _candidates(g: _Graph, probs: str, full_total: str, full_token: str, greedy: str, is_greedy: str,
                is_full: str, col: dict, k: int, vocab: int) -> None:
    """The `sample` graph's top-k / top-p rows: next_tokens and fallback (see the module docstring)."""
    zero_i, zero_f = "zero_i", "zero_f"  # sampler_model's constants
    # candidates: the k most likely, in probability order
    cand, index = g.op("TopK", probs, g.const("k", np.asarray([k], np.int64)), axis=1, largest=1,
                       sorted=1, outputs=2)  # (B, k)
    # the top-k cut keeps every token as likely as the k-th (ties kept, as the host does)
    has_k = g.op("Greater", col["top_k"], zero_i)
    kth_pos = g.op("Min", g.op("Max", g.op("Sub", col["top_k"], g.const("one_i", np.asarray(1, np.int64))), zero_i),
                   g.const("last_i", np.asarray(k - 1, np.int64)))
    kth = g.op("GatherElements", cand, kth_pos, axis=1)  # (B, 1)
    in_k = g.op("Or", g.op("Not", has_k), g.op("GreaterOrEqual", cand, kth))
    cand_k = g.op("Where", in_k, cand, zero_f)
    total_k = g.op("Where", has_k, g.op("ReduceSum", cand_k, "axis1", keepdims=1), full_total)
    before = g.op("Div", g.op("Sub", g.op("CumSum", cand_k, g.const("cum_axis", np.asarray(1, np.int64))),
                              cand_k), total_k)  # mass strictly before, (B, k)
    keep = g.op("And", in_k, g.op("Less", before, col["top_p"]))
    kept = g.op("Where", keep, cand, zero_f)
    # back to vocabulary order: sort the candidates by id (ids < 2^24 are exact in float32)
    ids_f = g.op("Neg", g.op("Cast", index, to=TensorProto.FLOAT))
    _, order = g.op("TopK", ids_f, "k", axis=1, largest=1, sorted=1, outputs=2)
    kept_v = g.op("GatherElements", kept, order, axis=1)
    index_v = g.op("GatherElements", index, order, axis=1)
    pos = _inverse_cdf(g, kept_v, col["uniform"], k, "cand")
    cand_token = g.op("Squeeze", g.op("GatherElements", index_v, g.op("Unsqueeze", pos, "axis1"), axis=1),
                      "axis1")
    # which path each row takes
    sampled = g.op("Where", is_full, full_token, cand_token)
    g.op("Where", is_greedy, greedy, sampled)
    g.nodes[-1].output[0] = "next_tokens"
    # fallback: the cut needs tokens beyond the candidates
    too_many_k = g.op("Greater", "top_k", g.const("k_cap", np.asarray(k, np.int64)))
    if k < vocab:  # the last candidate ties with the k-th: more ties may lie beyond the candidates
        last = g.op("Gather", cand, g.const("last_col", np.asarray([k - 1], np.int64)), axis=1)  # (B, 1)
        ties_beyond = g.op("Squeeze", g.op("And", has_k, g.op("GreaterOrEqual", last, kth)), "axis1")
        too_many_k = g.op("Or", too_many_k, ties_beyond)
    all_mass = g.op("Squeeze", g.op("Div", g.op("ReduceSum", cand, "axis1", keepdims=1), full_total), "axis1")
    wide_nucleus = g.op("And", g.op("Not", g.op("Greater", "top_k", zero_i)),
                        g.op("Less", all_mass, "top_p"))
    needs_more = g.op("Or", too_many_k, wide_nucleus)
    g.op("And", g.op("Not", is_greedy), g.op("And", g.op("Not", is_full), needs_more))
    g.nodes[-1].output[0] = "fallback"


def _onnx_type(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
