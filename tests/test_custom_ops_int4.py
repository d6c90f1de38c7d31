"""The LinearInt4 family of runtime.custom_ops: the Linear family with 4-bit weights in onnxruntime
MatMulNBits' layout (codes (N, K / block, block / 2), two a byte, the low nibble first; fp16
scales (N, K / block); optional packed 4-bit zero points, else 8). Its CPU kernel against numpy
here; its CUDA kernels against the CPU one where onnxruntime-gpu and a GPU are (skipped elsewhere
with that reason)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from runtime import custom_ops
from tests.test_custom_ops import assert_cuda_runs_equal_the_cpu

CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
FAMILY = ["LinearInt4", "LinearInt4SwiGLU", "NormLinearInt4", "NormLinearInt4SwiGLU"]
TYPES = {"x": TensorProto.FLOAT16, "skip": TensorProto.FLOAT16, "gamma": TensorProto.FLOAT16,
         "codes": TensorProto.UINT8, "scales": TensorProto.FLOAT16, "zeros": TensorProto.UINT8}


def int4_model(op: str, zeros: bool, block: int | None, epsilon: float = 1e-5) -> bytes:
    """One node of the family over graph inputs (b, s, K) activations and the weights' arrays."""
    norm = op.startswith("Norm")
    names = ["x", *(["skip", "gamma"] if norm else []), "codes", "scales", *(["zeros"] if zeros else [])]
    outputs = ["y", "sum", "scratch"] if norm else ["y", "scratch"]
    attributes = {**({"epsilon": epsilon} if norm else {}), **({"block_size": block} if block else {})}
    node = helper.make_node(op, names, outputs, domain=custom_ops.DOMAIN, **attributes)
    graph = helper.make_graph([node], "int4", [helper.make_tensor_value_info(i, TYPES[i], None) for i in names],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT16, None) for o in outputs
                               if o != "scratch"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid(custom_ops.DOMAIN, 1)])
    model.ir_version = 10
    return model.SerializeToString()


def int4_inputs(rows: tuple[int, int], k: int, n: int, block: int, op: str, zeros: bool,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Random activations and weights of n rows (the codes' rows: 2 x outputs with SwiGLU)."""
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal((*rows, k)).astype(np.float16),
             "codes": rng.integers(0, 256, (n, k // block, block // 2), dtype=np.uint8),
             "scales": (rng.random((n, k // block)) * 0.04 / np.sqrt(k) + 0.01 / np.sqrt(k)).astype(np.float16)}
    if zeros:
        feeds["zeros"] = rng.integers(0, 256, (n, (k // block + 1) // 2), dtype=np.uint8)
    if op.startswith("Norm"):
        feeds["skip"] = rng.standard_normal((*rows, k)).astype(np.float16)
        feeds["gamma"] = (1 + 0.1 * rng.standard_normal(k)).astype(np.float16)
    return feeds


def dequantized(feeds: dict, block: int) -> np.ndarray:
    """(N, K) fp32: (code - zero) * scale."""
    codes = feeds["codes"]
    n, blocks, _ = codes.shape
    q = np.stack([codes & 0xF, codes >> 4], axis=-1).reshape(n, blocks, block).astype(np.float32)
    if "zeros" in feeds:
        packed = feeds["zeros"]
        zero = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(n, -1)[:, :blocks].astype(np.float32)
    else:
        zero = np.full((n, blocks), 8, np.float32)
    return ((q - zero[..., None]) * feeds["scales"].astype(np.float32).reshape(n, blocks)[..., None]).reshape(n, -1)


def reference(feeds: dict, op: str, block: int, epsilon: float = 1e-5) -> tuple[np.ndarray, np.ndarray | None]:
    """(y, sum) in fp32, with the kernels' float16 roundings of the sum and the normalized rows."""
    h, total = feeds["x"].astype(np.float32), None
    if op.startswith("Norm"):
        total = (h + feeds["skip"].astype(np.float32)).astype(np.float16).astype(np.float32)
        scale = 1 / np.sqrt((total ** 2).mean(-1, keepdims=True) + epsilon)
        h = (total * scale * feeds["gamma"].astype(np.float32)).astype(np.float16).astype(np.float32)
    y = h @ dequantized(feeds, block).T
    if op.endswith("SwiGLU"):
        half = y.shape[-1] // 2
        gate, up = y[..., :half].astype(np.float16).astype(np.float32), y[..., half:].astype(np.float16).astype(np.float32)
        y = gate / (1 + np.exp(-gate)) * up
    return y, total


def session(model: bytes, providers=("CPUExecutionProvider",), cuda: bool = False, **provider_options):
    options = ort.SessionOptions()
    custom_ops.register(options, cuda=cuda)
    return ort.InferenceSession(model, options,
                                providers=[(p, provider_options) if p.startswith("CUDA") else p for p in providers])


@pytest.mark.parametrize("op", FAMILY)
@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("rows,k,n,block", [((1, 1), 64, 24, 32), ((2, 3), 192, 6, 64), ((1, 9), 96, 34, 32),
                                            ((1, 2), 160, 10, 32)])  # 160 / 32: an odd number of blocks
def test_the_int4_family_on_the_cpu_computes_its_reference(op, zeros, rows, k, n, block):
    feeds = int4_inputs(rows, k, n, block, op, zeros, seed=k + n)
    got = dict(zip(["y", "sum"], session(int4_model(op, zeros, block)).run(None, feeds)))
    want, total = reference(feeds, op, block)
    assert got["y"].shape == want.shape and got["y"].dtype == np.float16
    np.testing.assert_allclose(got["y"].astype(np.float32), want, rtol=2e-3, atol=2e-3)
    if total is not None:
        np.testing.assert_array_equal(got["sum"].astype(np.float32), total)


def test_the_low_nibble_is_the_first_code_and_no_zero_point_means_eight():
    feeds = {"x": np.eye(32, dtype=np.float16)[None], "codes": np.full((1, 1, 16), 0x1F, np.uint8),
             "scales": np.ones((1, 1), np.float16)}
    (y,) = session(int4_model("LinearInt4", False, 32)).run(None, feeds)[:1]
    np.testing.assert_array_equal(y[0, :, 0], np.tile([15 - 8, 1 - 8], 16).astype(np.float16))
    feeds["zeros"] = np.array([[0x03]], np.uint8)  # block 0's zero point: the low nibble, 3
    (y,) = session(int4_model("LinearInt4", True, 32)).run(None, feeds)[:1]
    np.testing.assert_array_equal(y[0, :, 0], np.tile([15 - 3, 1 - 3], 16).astype(np.float16))


@pytest.mark.parametrize("change,message", [
    ({"block": 16}, "block_size must be a positive multiple of 32"),
    ({"k": 80}, "K \\(the input's last dimension\\) must be a multiple of block_size"),
    ({"codes": (4, 2, 8)}, "codes must be \\(N, K / block_size, block_size / 2\\) uint8"),
    ({"scales": (4, 3)}, "scales must hold N \\* K / block_size values"),
    ({"zeros": (4, 2)}, "zero points must hold N \\* ceil\\(K / block_size / 2\\) bytes"),
    ({"op": "LinearInt4SwiGLU", "n": 3}, "codes must have an even number of rows"),
])
def test_weights_the_family_does_not_take_are_refused_with_the_reason(change, message):
    op, k, n, block = change.get("op", "LinearInt4"), change.get("k", 64), change.get("n", 4), change.get("block", 32)
    feeds = int4_inputs((1, 1), 64, n, 32, op, zeros="zeros" in change)
    feeds["x"] = np.zeros((1, 1, k), np.float16)
    if "codes" in change:
        feeds["codes"] = np.zeros(change["codes"], np.uint8)
    if "scales" in change:
        feeds["scales"] = np.zeros(change["scales"], np.float16)
    if "zeros" in change:
        feeds["zeros"] = np.zeros(change["zeros"], np.uint8)
    with pytest.raises(Exception, match=f"{op}: {message}"):
        session(int4_model(op, "zeros" in change, block)).run(None, feeds)


def test_a_node_without_its_block_size_is_refused_when_the_session_is_made():
    with pytest.raises(Exception, match="LinearInt4: the node needs its block_size attribute"):
        session(int4_model("LinearInt4", False, None))


CUDA_CASES = {  # (rows, K, codes rows, block, zero points)
    "gemv-1": ((1, 1), 2048, 3072, 32, False), "gemv-3": ((3, 1), 8192, 2048, 64, True),
    "gemv-wide": ((1, 1), 2048, 50000, 32, False), "gemv-2": ((2, 1), 2048, 300, 128, True),
    "gemv-small": ((1, 1), 96, 40, 32, True), "gemv-after-norm": ((4, 1), 8192, 512, 64, False),
    "gemm-6": ((6, 1), 2048, 3072, 32, True), "gemm-10": ((2, 5), 2048, 3072, 32, False),
    "gemm-64-split": ((64, 1), 2048, 2048, 32, False), "gemm-21": ((7, 3), 2048, 3072, 64, True),
    "gemm-64-long-k": ((64, 1), 8192, 2048, 64, True), "gemm-32": ((32, 1), 2048, 3072, 64, False),
    "gemm-130": ((130, 1), 2048, 600, 128, True),
    "gemm-odd-n": ((20, 1), 2048, 1001, 32, False), "gemm-long-k": ((16, 1), 8192, 2048, 64, False),
    "gemm-odd-steps": ((16, 1), 576, 1024, 32, False),  # 9 steps of K: one a stage, where K is split too
    "dequantized-k96": ((8, 1), 96, 40, 32, True)}


@pytest.mark.skipif(not CUDA, reason="the CUDA kernels need onnxruntime's CUDA provider: onnxruntime-gpu and an NVIDIA GPU")
@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("op", FAMILY)
@pytest.mark.parametrize("rows,k,n,block,zeros", list(CUDA_CASES.values()), ids=list(CUDA_CASES))
def test_the_int4_family_on_cuda_equals_the_cpu_kernel_and_runs_in_a_captured_graph(graph, op, rows, k, n, block, zeros):
    """1-4 rows: the GEMV kernel does it all (K split over 1-8 warps; the norm in shared memory
    where 2 x rows x K bytes fit 32 KiB, else our norm kernel first: gemv-after-norm); more rows:
    the tensor-core GEMM of gemm_int4_mma.cuh (the default: blocks of 8, 16, 32 and 64 rows, one
    to three of them, by mma.sync, or from 32 rows on an H100 / H200 by the warpgroup MMA; K split
    where the outputs are few, its parts stored and added in order after, or with SwiGLU in a thread
    block cluster on sm_90, an odd count of outputs, zero points, blocks of 32, 64 and 128, SwiGLU in
    its epilogue; K not a multiple of 64 goes to the bands); or with
    OPTIMIZER_INT4_GEMM=dequantize (the test below) the weights dequantized band by band for cuBLAS
    on onnxruntime's handle, then SwiGLU; each eager, and captured into a graph and replayed."""
    import torch  # noqa: F401  (loads the CUDA libraries onnxruntime-gpu links against)

    feeds = int4_inputs(rows, k, 2 * n if op.endswith("SwiGLU") else n, block, op, zeros, seed=k + n)
    model = int4_model(op, zeros, block)
    cpu = session(model).run(None, feeds)
    sess = session(model, ("CUDAExecutionProvider",), cuda=True, enable_cuda_graph="1" if graph else "0")
    assert_cuda_runs_equal_the_cpu(sess, feeds, cpu)


FAMILY_TEST = "test_the_int4_family_on_cuda_equals_the_cpu_kernel_and_runs_in_a_captured_graph"
CHAIN_TEST = "test_the_chain_on_cuda_equals_the_cpu_and_the_two_ops_on_cuda"  # below


def cases_run(*words: str) -> int:
    """The two CUDA tests' runs (the family's, the chain's) over their cases whose ids hold one of
    `words`: each op, eager and captured."""
    def matching(cases: dict) -> int:
        return sum(1 for case in cases if any(word in case for word in words))
    return 2 * len(FAMILY) * matching(CUDA_CASES) + 2 * len(CHAIN) * matching(CHAIN_CUDA_CASES)


def child_pytest(env: dict[str, str], cases: str) -> subprocess.CompletedProcess:
    """The family's and the chain's CUDA tests over `cases` in a child pytest with `env` set (the
    library reads its variables once a process)."""
    tests = [f"{__file__}::{test}" for test in (FAMILY_TEST, CHAIN_TEST)]
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, "-k", cases],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1], env={**os.environ, **env})


@pytest.mark.skipif(not CUDA, reason="the CUDA kernels need onnxruntime's CUDA provider: onnxruntime-gpu and an NVIDIA GPU")
def test_optimizer_int4_gemm_dequantize_runs_the_bands_with_the_same_results():
    """Every case of more than 4 rows through the dequantized bands and cuBLAS instead of
    gemm_int4_mma.cuh, each op (the chain's too), eager and captured."""
    done = child_pytest({"OPTIMIZER_INT4_GEMM": "dequantize"}, "gemm or dequantized")
    assert done.returncode == 0 and f"{cases_run('gemm', 'dequantized')} passed" in done.stdout, done.stdout[-3000:]


@pytest.mark.skipif(not CUDA, reason="the CUDA kernels need onnxruntime's CUDA provider: onnxruntime-gpu and an NVIDIA GPU")
def test_the_gemm_with_k_s_parts_added_by_atomics_and_launched_plainly_gives_the_same_results():
    """The tensor-core GEMM's cases with K's parts added by atomics (OPTIMIZER_INT4_SPLIT=atomics,
    not stored and added in order after: the chain then converts its first GEMM's sums as LinearInt4
    does) and its kernels launched plainly (OPTIMIZER_CUDA_PDL=0), each op, eager and captured."""
    done = child_pytest({"OPTIMIZER_INT4_SPLIT": "atomics", "OPTIMIZER_CUDA_PDL": "0"}, "gemm")
    assert done.returncode == 0 and f"{cases_run('gemm')} passed" in done.stdout, done.stdout[-3000:]


@pytest.mark.skipif(not CUDA, reason="the CUDA kernels need onnxruntime's CUDA provider: onnxruntime-gpu and an "
                    "NVIDIA GPU")
def test_the_gemm_one_step_of_k_a_stage_where_k_is_split_gives_the_same_results():
    """The tensor-core GEMM's cases with one step of K a pipeline stage everywhere
    (OPTIMIZER_INT4_STEPS=single; by default two where K is split), each op, eager and captured."""
    done = child_pytest({"OPTIMIZER_INT4_STEPS": "single"}, "gemm")
    assert done.returncode == 0 and f"{cases_run('gemm')} passed" in done.stdout, done.stdout[-3000:]


@pytest.mark.skipif(not CUDA, reason="the CUDA kernels need onnxruntime's CUDA provider: onnxruntime-gpu and an "
                    "NVIDIA GPU")
def test_the_gemm_by_mma_sync_tiles_only_gives_the_same_results():
    """The tensor-core GEMM's cases with mma.sync's tiles for every call (OPTIMIZER_INT4_TILE=mma; by
    default Hopper's warpgroup MMA from 32 rows on, where the GPU has it), each op, eager and captured."""
    done = child_pytest({"OPTIMIZER_INT4_TILE": "mma"}, "gemm")
    assert done.returncode == 0 and f"{cases_run('gemm')} passed" in done.stdout, done.stdout[-3000:]


@pytest.mark.skipif(not CUDA, reason="the CUDA kernels need onnxruntime's CUDA provider: onnxruntime-gpu and an NVIDIA GPU")
@pytest.mark.parametrize("variable,message", [
    ("OPTIMIZER_INT4_GEMM", "OPTIMIZER_INT4_GEMM must be mma (the tensor-core GEMM above 4 rows) or dequantize"),
    ("OPTIMIZER_INT4_SPLIT", "OPTIMIZER_INT4_SPLIT must be parts (K's parts of the tensor-core GEMM stored, added"),
    ("OPTIMIZER_INT4_STEPS", "OPTIMIZER_INT4_STEPS must be paired (two steps of K a stage of the tensor-core GEMM"),
    ("OPTIMIZER_INT4_TILE", "OPTIMIZER_INT4_TILE must be warpgroup (Hopper's warpgroup MMA from 32 rows on")])
def test_an_unknown_value_of_a_kernel_choice_is_refused_with_the_choices(variable, message):
    done = child_pytest({variable: "fastest"}, "gemv-1 and not True")
    assert done.returncode != 0
    assert message in done.stdout


NO_CUDA = "the CUDA kernels need onnxruntime's CUDA provider: onnxruntime-gpu and an NVIDIA GPU"
CHAIN = ["LinearInt4NormLinearInt4", "LinearInt4NormLinearInt4SwiGLU"]
CHAIN_INPUTS = ["x", "codes_a", "scales_a", "zeros_a", "skip", "gamma", "codes", "scales", "zeros"]


def chain_model(op: str, zeros: bool, block: int, epsilon: float = 1e-5, separate: bool = False) -> bytes:
    """The chain op over graph inputs, or (`separate`) the two ops it stands for: LinearInt4 of x by
    the first weights, then NormLinearInt4[SwiGLU] of its output."""
    given = [i for i in CHAIN_INPUTS if zeros or not i.startswith("zeros")]
    types = {i: TYPES[i.removesuffix("_a")] for i in given}
    norm_op = op.removeprefix("LinearInt4")
    if separate:
        first = helper.make_node("LinearInt4", ["x", "codes_a", "scales_a", *(["zeros_a"] if zeros else [])],
                                 ["h", "first_scratch"], domain=custom_ops.DOMAIN, block_size=block)
        second = helper.make_node(norm_op, ["h", "skip", "gamma", "codes", "scales", *(["zeros"] if zeros else [])],
                                  ["y", "sum", "scratch"], domain=custom_ops.DOMAIN, block_size=block, epsilon=epsilon)
        nodes = [first, second]
    else:
        nodes = [helper.make_node(op, [i if i in given else "" for i in CHAIN_INPUTS], ["y", "sum", "scratch"],
                                  domain=custom_ops.DOMAIN, block_size=block, epsilon=epsilon)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info(i, types[i], None) for i in given],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT16, None) for o in ("y", "sum")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid(custom_ops.DOMAIN, 1)])
    model.ir_version = 10
    return model.SerializeToString()


def chain_inputs(rows: tuple[int, int], k: int, hidden: int, n: int, block: int, op: str, zeros: bool,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """x (rows, k), the first weights (hidden, k), skip (rows, hidden), gamma, the second weights (n
    rows of codes: 2 x outputs with SwiGLU, K = hidden)."""
    first = int4_inputs(rows, k, hidden, block, "LinearInt4", zeros, seed)
    second = int4_inputs(rows, hidden, n, block, "NormLinearInt4", zeros, seed + 1)
    feeds = {"x": first["x"], "skip": second["skip"], "gamma": second["gamma"]}
    feeds.update({f"{name}_a": first[name] for name in ("codes", "scales", "zeros") if name in first})
    feeds.update({name: second[name] for name in ("codes", "scales", "zeros") if name in second})
    return feeds


@pytest.mark.parametrize("op", CHAIN)
@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("rows,k,hidden,n,block", [((1, 1), 64, 32, 24, 32), ((2, 3), 128, 64, 10, 64),
                                                   ((1, 9), 96, 96, 34, 32)])
def test_the_chain_on_the_cpu_gives_the_two_ops_results_exactly(op, zeros, rows, k, hidden, n, block):
    feeds = chain_inputs(rows, k, hidden, 2 * n if op.endswith("SwiGLU") else n, block, op, zeros, seed=k + n)
    got = session(chain_model(op, zeros, block)).run(None, feeds)
    want = session(chain_model(op, zeros, block, separate=True)).run(None, feeds)
    assert got[0].shape == (*rows, n) and got[1].shape == (*rows, hidden)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    h = feeds["x"].astype(np.float32) @ dequantized({name: feeds[f"{name}_a"] for name in ("codes", "scales", "zeros")
                                                     if f"{name}_a" in feeds}, block).T
    reference_y, total = reference({**feeds, "x": h.astype(np.float16)}, op.removeprefix("LinearInt4"), block)
    np.testing.assert_allclose(got[0].astype(np.float32), reference_y, rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(got[1].astype(np.float32), total)


@pytest.mark.parametrize("change,message", [
    ({"skip": (1, 1, 48)}, "skip must have the first linear's output shape"),
    ({"gamma": (48,)}, "gamma must be \\(N,\\), N the first linear's outputs"),
    ({"codes_a": (32, 2, 8)}, "codes must be \\(N, K / block_size, block_size / 2\\) uint8"),
    ({"codes": (4, 2, 8)}, "codes must be \\(N, K / block_size, block_size / 2\\) uint8"),
])
def test_a_chain_whose_parts_do_not_fit_together_is_refused_with_the_reason(change, message):
    op = "LinearInt4NormLinearInt4"
    feeds = chain_inputs((1, 1), 64, 32, 4, 32, op, False)
    for name, shape in change.items():
        feeds[name] = np.zeros(shape, feeds[name].dtype)
    with pytest.raises(Exception, match=f"{op}: {message}"):
        session(chain_model(op, False, 32)).run(None, feeds)


CHAIN_CUDA_CASES = {  # (rows, K, hidden, codes rows, block, zero points): the 1B shape's o -> gate/up
    "gemv-1": ((1, 1), 2048, 2048, 2048, 32, False), "gemv-4": ((4, 1), 2048, 2048, 1024, 64, True),
    "gemm-8": ((8, 1), 2048, 2048, 1024, 32, False), "gemm-64-parts": ((64, 1), 2048, 2048, 3072, 32, False),
    "gemm-64-long-k": ((64, 1), 8192, 2048, 3072, 64, True),
    "gemm-64-hidden-4096": ((64, 1), 2048, 4096, 1024, 32, False),
    "gemm-16-hidden-12288": ((16, 1), 2048, 12288, 64, 64, True),
    "gemm-16-hidden-16448": ((16, 1), 2048, 16448, 64, 64, False),
    "gemm-130": ((130, 1), 2048, 1024, 600, 128, True), "dequantized-k96": ((8, 1), 96, 64, 40, 32, True)}


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("op", CHAIN)
@pytest.mark.parametrize("rows,k,hidden,n,block,zeros", list(CHAIN_CUDA_CASES.values()), ids=list(CHAIN_CUDA_CASES))
def test_the_chain_on_cuda_equals_the_cpu_and_the_two_ops_on_cuda(graph, op, rows, k, hidden, n, block, zeros):
    """1-4 rows: the two GEMVs (h in the scratch); more: the first GEMM's K parts left in the scratch
    and added by the norm's kernel (gemm-64-parts, gemm-64-long-k, gemm-64-hidden-4096: two chunks a
    thread, gemm-16-hidden-12288: six of the eight its registers hold, gemm-16-hidden-16448: more than
    they hold, x written and read back), or h written in float16 where K is not split or the bands
    take it; eager and captured.
    The same outputs as LinearInt4 then NormLinearInt4[SwiGLU] on CUDA, bit for bit; with
    OPTIMIZER_INT4_SPLIT=atomics (a child pytest below), whose fp32 sums add up in whatever order the
    blocks come, to a few float16 units (on an H100: at most 6.1e-5 apart where they differ)."""
    import torch  # noqa: F401  (loads the CUDA libraries onnxruntime-gpu links against)

    feeds = chain_inputs(rows, k, hidden, 2 * n if op.endswith("SwiGLU") else n, block, op, zeros, seed=k + n)
    cpu = session(chain_model(op, zeros, block)).run(None, feeds)
    captured = session(chain_model(op, zeros, block), ("CUDAExecutionProvider",), cuda=True,
                       enable_cuda_graph="1" if graph else "0")
    assert_cuda_runs_equal_the_cpu(captured, feeds, cpu)
    on_cuda = [session(chain_model(op, zeros, block, separate=separate), ("CUDAExecutionProvider",), cuda=True)
               .run(None, feeds) for separate in (False, True)]
    atomics = os.environ.get("OPTIMIZER_INT4_SPLIT") == "atomics"
    for a, b in zip(*on_cuda):
        if atomics:
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=1e-2, atol=1e-3)
        else:
            np.testing.assert_array_equal(a, b)
