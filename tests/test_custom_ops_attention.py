"""CachedAttention of runtime.custom_ops: onnxruntime GroupQueryAttention's computation (its rotary,
the new keys and values into the cache, causal attention with an optional sliding window and
softcap) in one CUDA kernel. Its CPU kernel against onnxruntime's own GroupQueryAttention CPU
kernel on the same inputs, in place (the static layout's shared buffer) and concatenating (build
verification's calls); its CUDA kernel against the CPU one where onnxruntime-gpu and a GPU are
(skipped elsewhere with that reason)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime import custom_ops
from tests.test_custom_ops import assert_cuda_runs_equal_the_cpu

CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
POSITIONS = 48  # the rotary tables' rows


@dataclass
class Case:
    batch: int
    seq: int
    lengths: list[int]  # each row's positions after the call (seqlens_k + 1)
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 32
    capacity: int = 24  # the past's positions
    packed: bool = True
    window: int = -1
    softcap: float = 0.0
    total: int | None = None  # total_sequence_length (default: the longest row, at least seq)
    feeds: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        rng = np.random.default_rng(self.batch * 100 + self.seq * 10 + self.head_dim)
        hd, nkv = self.head_dim, self.kv_heads
        width = (self.heads + 2 * nkv) * hd if self.packed else self.heads * hd
        f = self.feeds
        f["query"] = rng.standard_normal((self.batch, self.seq, width)).astype(np.float16)
        if not self.packed:
            f["key"] = rng.standard_normal((self.batch, self.seq, nkv * hd)).astype(np.float16)
            f["value"] = rng.standard_normal((self.batch, self.seq, nkv * hd)).astype(np.float16)
        for name in ("past_key", "past_value"):
            f[name] = rng.standard_normal((self.batch, nkv, self.capacity, hd)).astype(np.float16)
        f["seqlens_k"] = np.asarray(self.lengths, np.int32) - 1
        f["total"] = np.asarray(self.total or max(*self.lengths, self.seq), np.int32)
        angles = np.arange(POSITIONS)[:, None] * 10000.0 ** (-np.arange(hd // 2) / (hd // 2))[None]
        f["cos"], f["sin"] = np.cos(angles).astype(np.float16), np.sin(angles).astype(np.float16)

    def past(self, row: int) -> int:
        return max(0, self.lengths[row] - self.seq)


def attention_model(case: Case, op: str, constant_total: bool = False) -> bytes:
    """One GroupQueryAttention (com.microsoft) or CachedAttention node over graph inputs."""
    hd, nkv = case.head_dim, case.kv_heads
    types = {"seqlens_k": TensorProto.INT32, "total": TensorProto.INT32}
    names = [n for n in ("query", "key", "value", "past_key", "past_value", "seqlens_k", "total", "cos", "sin")
             if n in case.feeds]
    attributes = dict(num_heads=case.heads, kv_num_heads=nkv, scale=0.0, softcap=case.softcap,
                      local_window_size=case.window)
    if op == "GroupQueryAttention":
        inputs = ["query", "" if case.packed else "key", "" if case.packed else "value", "past_key", "past_value",
                  "seqlens_k", "total", "cos", "sin"]
        node = helper.make_node(op, inputs, ["out", "present_key", "present_value"], domain="com.microsoft",
                                do_rotary=1, rotary_interleaved=0, **attributes)
        domain = "com.microsoft"
    else:
        inputs = ["query", "past_key", "past_value", "seqlens_k", "total", "cos", "sin",
                  *([] if case.packed else ["key", "value"])]
        node = helper.make_node(op, inputs, ["out", "present_key", "present_value"], domain=custom_ops.DOMAIN,
                                **attributes)
        domain = custom_ops.DOMAIN
    initializers = [numpy_helper.from_array(case.feeds["total"], "total")] if constant_total else []
    graph = helper.make_graph(
        [node], "attention",
        [helper.make_tensor_value_info(n, types.get(n, TensorProto.FLOAT16), None) for n in names
         if not (constant_total and n == "total")],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT16, None) for o in ("out", "present_key", "present_value")],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(domain, 1)])
    model.ir_version = 10
    return model.SerializeToString()


def session(model: bytes, providers=("CPUExecutionProvider",), cuda=False, **provider_options):
    options = ort.SessionOptions()
    custom_ops.register(options, cuda=cuda)
    return ort.InferenceSession(model, options,
                                providers=[(p, provider_options) if p.startswith("CUDA") else p for p in providers])


def run_cpu(case: Case, op: str, in_place: bool) -> list[np.ndarray]:
    """(out, present_key, present_value); in place: present bound to the past's own buffer."""
    sess = session(attention_model(case, op))
    binding = sess.io_binding()
    caches = {n: case.feeds[n].copy() for n in ("past_key", "past_value")}
    for name, array in case.feeds.items():
        if name not in caches:
            binding.bind_cpu_input(name, array)
    for name, array in caches.items():
        binding.bind_input(name, "cpu", 0, np.float16, list(array.shape), array.ctypes.data)
    binding.bind_output("out", "cpu")
    for name in ("present_key", "present_value"):
        past = caches[name.replace("present", "past")]
        if in_place:
            binding.bind_output(name, "cpu", 0, np.float16, list(past.shape), past.ctypes.data)
        else:
            binding.bind_output(name, "cpu")
    sess.run_with_iobinding(binding)
    out = binding.copy_outputs_to_cpu()
    return [out[0], caches["past_key"], caches["past_value"]] if in_place else out


def assert_same_where_defined(case: Case, want: list[np.ndarray], got: list[np.ndarray]) -> None:
    """Outputs of each row's real tokens and the cache positions each row holds (GQA leaves the
    outputs of a right-padded row's padding undefined)."""
    for row in range(case.batch):
        length = case.lengths[row]
        real = length - case.past(row)
        np.testing.assert_allclose(got[0][row, :real].astype(np.float32), want[0][row, :real].astype(np.float32),
                                   atol=2e-3, rtol=2e-3, err_msg=f"output of row {row}")
        for i, name in ((1, "present_key"), (2, "present_value")):
            assert got[i].shape == want[i].shape, name
            np.testing.assert_array_equal(got[i][row, :, :length], want[i][row, :, :length], err_msg=f"{name} {row}")


CASES = {  # the calls the runtime makes, and GQA's options
    "decode rows of different lengths": Case(3, 1, [5, 1, 9]),
    "a chunk after a past": Case(1, 4, [9]),
    "a right-padded first prefill": Case(2, 6, [6, 3]),
    "key and value apart": Case(2, 1, [7, 3], packed=False),
    "a sliding window, decode": Case(2, 1, [12, 3], window=4),
    "a sliding window, prefill": Case(1, 6, [6], window=3),
    "a softcap": Case(2, 1, [12, 3], softcap=2.0),
    "head size 64, four heads a kv head": Case(2, 1, [20, 11], heads=8, kv_heads=2, head_dim=64),
    "head size 128, the cache full": Case(1, 1, [24], heads=4, kv_heads=4, head_dim=128),
}


@pytest.mark.parametrize("name", CASES)
def test_in_place_it_computes_what_onnxruntimes_group_query_attention_does(name):
    case = CASES[name]
    want = run_cpu(case, "GroupQueryAttention", True)
    assert_same_where_defined(case, want, run_cpu(case, "CachedAttention", True))


@pytest.mark.parametrize("case", [Case(1, 5, [5], capacity=0), Case(1, 1, [8], capacity=7),
                                  Case(1, 3, [10], capacity=7), Case(2, 1, [6, 3], capacity=5, total=6)],
                         ids=["first prompt", "decode", "chunk", "decode, two rows"])
def test_concatenating_it_returns_group_query_attentions_present(case):
    """Without a shared buffer the present has max(past, total_sequence_length) positions, the
    past copied into its first ones (how build verification runs an engine)."""
    want = run_cpu(case, "GroupQueryAttention", False)
    assert_same_where_defined(case, want, run_cpu(case, "CachedAttention", False))


def test_several_rows_of_several_tokens_equal_each_row_alone():
    """A call GroupQueryAttention refuses (more than one row with a past and several new tokens):
    each row as it would be alone."""
    both = Case(2, 3, [10, 5])
    together = run_cpu(both, "CachedAttention", True)
    for row in range(2):
        alone = Case(1, 3, [both.lengths[row]])
        alone.feeds.update({n: a[row:row + 1] for n, a in both.feeds.items() if n not in ("cos", "sin", "total")})
        alone.feeds["total"] = np.asarray(both.lengths[row], np.int32)
        by_itself = run_cpu(alone, "CachedAttention", True)
        for got, want in zip(together, by_itself):
            np.testing.assert_array_equal(got[row:row + 1], want)


@pytest.mark.parametrize("change, message", [
    (dict(heads=3), "num_heads must be a multiple of kv_num_heads"),
    (dict(packed_width=-32), "a packed query must be (batch, seq, (num_heads + 2 kv_num_heads) head_dim)"),
    (dict(lengths=[30]), "row 0 holds 30 positions with 1 new tokens: not within the past's 24 positions"),
    (dict(tables=8), "cos_cache and sin_cache must be (max_positions, head_dim / 2)"),
])
def test_a_call_it_cannot_take_is_refused_with_the_reason(change, message):
    case = Case(1, 1, change.get("lengths", [5]), heads=change.get("heads", 4), total=24)
    if "packed_width" in change:
        case.feeds["query"] = case.feeds["query"][..., :change["packed_width"]]
    if "tables" in change:
        case.feeds["cos"] = case.feeds["sin"] = case.feeds["cos"][:, :change["tables"]]
    with pytest.raises(Exception, match=re.escape("CachedAttention: " + message)):
        run_cpu(case, "CachedAttention", True)


def test_present_sharing_one_cache_but_not_the_other_is_refused():
    case = Case(1, 1, [5])
    sess = session(attention_model(case, "CachedAttention"))
    binding = sess.io_binding()
    keys = case.feeds["past_key"].copy()
    for name, array in case.feeds.items():
        if name != "past_key":
            binding.bind_cpu_input(name, array)
    binding.bind_input("past_key", "cpu", 0, np.float16, list(keys.shape), keys.ctypes.data)
    binding.bind_output("out", "cpu")
    binding.bind_output("present_key", "cpu", 0, np.float16, list(keys.shape), keys.ctypes.data)
    binding.bind_output("present_value", "cpu")
    with pytest.raises(Exception, match="must both share their past's buffer"):
        sess.run_with_iobinding(binding)


# calls CUDA runs through attention_mma.cuh's tensor-core kernels (emulated on the CPU in
# tests/test_attention_mma_emulated.py): 16 new tokens a row or more (attention.cu's kMmaPrefillTokens),
# and fewer in grids of kMmaDecodeBlocks blocks or more (the two large-batch decodes above too)
TENSOR_CORE_CALLS = {
    "a first prefill of 100 tokens, two query tiles": Case(1, 100, [100], heads=8, kv_heads=2, head_dim=64,
                                                           capacity=128),
    "a right-padded prefill of two rows": Case(2, 40, [40, 17], capacity=48),
    "a chunk of 20 after a past, a sliding window": Case(1, 20, [70], head_dim=64, capacity=72, window=24),
    "a prefill with a softcap, head size 128": Case(1, 32, [32], heads=4, kv_heads=4, head_dim=128, capacity=40,
                                                    softcap=2.0),
    "verification calls of 4 tokens in 40 rows": Case(40, 4, [5 + (11 * r) % 70 for r in range(40)], heads=8,
                                                      kv_heads=4, head_dim=64, capacity=80, total=80),
}


@pytest.mark.skipif(not CUDA, reason="the CUDA kernel needs onnxruntime's CUDA provider: onnxruntime-gpu and a GPU")
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "captured"])
@pytest.mark.parametrize("name", [*CASES, "a long decode, head size 128", "a batch-72 decode",
                                  "a batch-96 decode, groups of 3", "several rows of several tokens",
                                  *TENSOR_CORE_CALLS])
def test_on_cuda_it_equals_the_cpu_kernel_and_runs_in_a_captured_graph(graph, name):
    """Concatenating (the present a new buffer, the past copied in first), run three times eager
    or captured and replayed: the same outputs as the CPU kernel's."""
    import torch  # noqa: F401  (loads the CUDA libraries onnxruntime-gpu links against)

    case = CASES.get(name) or TENSOR_CORE_CALLS.get(name) or {
        "a long decode, head size 128": Case(2, 1, [300, 129], heads=32, kv_heads=8, head_dim=128, capacity=320,
                                             total=320),
        # grids large enough for the kernel's large-grid paths (a block per kv group's heads where
        # attention.cu's kGroupQueries is set): groups of 4, and of 3 (SmolLM2's)
        "a batch-72 decode": Case(72, 1, list(range(3, 3 + 72 * 4, 4)), heads=16, kv_heads=4, head_dim=64,
                                  capacity=300, total=300),
        "a batch-96 decode, groups of 3": Case(96, 1, [5 + (7 * r) % 90 for r in range(96)], heads=12, kv_heads=4,
                                               head_dim=64, capacity=100, total=100),
        "several rows of several tokens": Case(2, 3, [10, 5]),
    }[name]
    if case.capacity + 1 > POSITIONS:
        case = _longer_tables(case)
    model = attention_model(case, "CachedAttention", constant_total=True)
    feeds = {n: a for n, a in case.feeds.items() if n != "total"}
    cpu = session(model).run(None, feeds)
    sess = session(model, ("CUDAExecutionProvider",), cuda=True, enable_cuda_graph="1" if graph else "0")
    assert_cuda_runs_equal_the_cpu(sess, feeds, cpu)


def _longer_tables(case: Case) -> Case:
    rows = max(case.capacity, int(case.feeds["total"])) + 1
    hd = case.head_dim
    angles = np.arange(rows)[:, None] * 10000.0 ** (-np.arange(hd // 2) / (hd // 2))[None]
    case.feeds["cos"], case.feeds["sin"] = np.cos(angles).astype(np.float16), np.sin(angles).astype(np.float16)
    return case
