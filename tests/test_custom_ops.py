"""runtime.custom_ops: our onnxruntime custom-op library (domain optimizer.ops), built from its
C++ / CUDA sources with the compilers found, registered per session. On the CPU provider here;
the CUDA kernels where onnxruntime-gpu and a GPU are (skipped elsewhere with that reason)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from runtime import custom_ops

CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def swiglu_model(dims: list) -> bytes:
    node = helper.make_node("SwiGLU", ["x"], ["y"], domain=custom_ops.DOMAIN)
    graph = helper.make_graph([node], "swiglu", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid(custom_ops.DOMAIN, 1)])
    model.ir_version = 10
    return model.SerializeToString()


def linear_model(k, n, op: str = "Linear", epsilon: float | None = 1e-5) -> bytes:
    """One node of the Linear family: x (b, s, k) [, skip (b, s, k), gamma (k)], w (n, k)."""
    norm = op.startswith("Norm")
    names = ["x", "skip", "gamma", "w"] if norm else ["x", "w"]
    shapes = {"x": ["b", "s", k], "skip": ["b", "s", k], "gamma": [k], "w": [n, k]}
    outputs = ["y", "sum", "scratch"] if norm else ["y", "scratch"] if op.endswith("SwiGLU") else ["y"]
    node = helper.make_node(op, names, outputs, domain=custom_ops.DOMAIN,
                            **({"epsilon": epsilon} if norm and epsilon is not None else {}))
    graph = helper.make_graph([node], "linear", [helper.make_tensor_value_info(i, TensorProto.FLOAT16, shapes[i])
                                                 for i in names],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT16, None) for o in outputs
                               if o != "scratch"])  # the kernels' own: read by nothing, as in an engine
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid(custom_ops.DOMAIN, 1)])
    model.ir_version = 10
    return model.SerializeToString()


def linear_reference(feeds: dict, op: str, epsilon: float = 1e-5) -> tuple[np.ndarray, np.ndarray | None]:
    """(y, sum) in fp32, with the kernels' float16 roundings of the sum and the normalized rows."""
    h, total = feeds["x"].astype(np.float32), None
    if op.startswith("Norm"):
        total = (h + feeds["skip"].astype(np.float32)).astype(np.float16).astype(np.float32)
        scale = 1 / np.sqrt((total ** 2).mean(-1, keepdims=True) + epsilon)
        h = (total * scale * feeds["gamma"].astype(np.float32)).astype(np.float16).astype(np.float32)
    y = h @ feeds["w"].astype(np.float32).T
    if op.endswith("SwiGLU"):
        y = reference(y.astype(np.float16))
    return y, total


def reference(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    gate, up = x[..., :half].astype(np.float32), x[..., half:].astype(np.float32)
    return gate / (1 + np.exp(-gate)) * up


def session(providers, cuda=False, model=None, **provider_options):
    options = ort.SessionOptions()
    custom_ops.register(options, cuda=cuda)
    return ort.InferenceSession(model or swiglu_model(["b", "s", "n"]), options,
                                providers=[(p, provider_options) if p.startswith("CUDA") else p for p in providers])


def linear_inputs(rows: tuple[int, int], k: int, n: int, seed: int = 0, op: str = "Linear") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal((*rows, k)).astype(np.float16),
             "w": (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float16)}
    if op.startswith("Norm"):
        feeds["skip"] = rng.standard_normal((*rows, k)).astype(np.float16)
        feeds["gamma"] = (1 + 0.1 * rng.standard_normal(k)).astype(np.float16)
    return feeds


@pytest.mark.parametrize("shape", [(1, 1, 16), (2, 3, 10), (3, 5, 2 * 129)])
def test_swiglu_on_the_cpu_is_silu_of_the_gate_times_up(shape):
    x = (np.random.default_rng(sum(shape)).standard_normal(shape) * 3).astype(np.float16)
    (y,) = session(["CPUExecutionProvider"]).run(None, {"x": x})
    assert y.shape == shape[:-1] + (shape[-1] // 2,) and y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float32), reference(x), rtol=2e-3, atol=2e-3)


FAMILY = ["Linear", "LinearSwiGLU", "NormLinear", "NormLinearSwiGLU"]


@pytest.mark.parametrize("op", FAMILY)
@pytest.mark.parametrize("rows,k,n", [((1, 1), 64, 24), ((2, 3), 40, 6), ((1, 9), 96, 34)])
def test_the_linear_family_on_the_cpu_computes_its_reference(op, rows, k, n):
    feeds = linear_inputs(rows, k, n, op=op)
    got = dict(zip(["y", "sum"], session(["CPUExecutionProvider"], model=linear_model(k, n, op)).run(None, feeds)))
    want, total = linear_reference(feeds, op)
    assert got["y"].shape == want.shape and got["y"].dtype == np.float16
    np.testing.assert_allclose(got["y"].astype(np.float32), want, rtol=2e-3, atol=2e-3)
    if total is not None:
        np.testing.assert_array_equal(got["sum"].astype(np.float32), total)


@pytest.mark.parametrize("op,k,n,message", [
    ("Linear", "k", 4, "weight must be \\(N, K\\), K the input's last dimension"),  # K symbolic: x and w part
    ("LinearSwiGLU", 8, 5, "even number of rows"),
    ("NormLinear", 12, 4, "K must be a multiple of 8"),
])
def test_a_call_the_family_does_not_take_is_refused_with_the_reason(op, k, n, message):
    width = 6 if k == "k" else k
    feeds = linear_inputs((1, 1), 8 if k == "k" else k, n, op=op)
    feeds["w"] = feeds["w"][:, :width]
    with pytest.raises(Exception, match=message):
        session(["CPUExecutionProvider"], model=linear_model(k, n, op)).run(None, feeds)


def test_a_norm_without_its_epsilon_is_refused_when_the_session_is_made():
    with pytest.raises(Exception, match="NormLinear: the node needs its epsilon attribute"):
        session(["CPUExecutionProvider"], model=linear_model(8, 4, "NormLinear", epsilon=None))


def test_an_odd_last_dimension_is_refused_with_the_reason():
    with pytest.raises(Exception, match="last dimension must be even"):
        session(["CPUExecutionProvider"]).run(None, {"x": np.zeros((1, 2, 7), np.float16)})


def test_the_library_is_built_once_per_source_and_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIMIZER_CACHE", str(tmp_path))
    first = custom_ops.library()
    assert first.is_relative_to(tmp_path / "custom_ops") and first.name == custom_ops.NAME
    stamp = first.stat().st_mtime_ns
    assert custom_ops.library() == first and first.stat().st_mtime_ns == stamp  # cached, not rebuilt
    assert [p.name for p in first.parent.iterdir()] == [custom_ops.NAME]  # no scratch left behind


def test_without_nvcc_the_build_has_cpu_kernels_only_and_cuda_use_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIMIZER_CACHE", str(tmp_path))
    monkeypatch.setattr(custom_ops, "find_nvcc", lambda: None)
    path = custom_ops.library()
    assert custom_ops.providers(path) == {"cpu"}
    with pytest.raises(custom_ops.CustomOpsError, match="without CUDA kernels") as err:
        custom_ops.register(ort.SessionOptions(), cuda=True)
    assert "nvcc" in err.value.hint
    x = np.random.default_rng(1).standard_normal((1, 2, 8)).astype(np.float16)
    options = ort.SessionOptions()
    custom_ops.register(options)
    (y,) = ort.InferenceSession(swiglu_model(["b", "s", "n"]), options).run(None, {"x": x})
    np.testing.assert_allclose(y.astype(np.float32), reference(x), rtol=2e-3, atol=2e-3)


def test_without_a_compiler_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIMIZER_CACHE", str(tmp_path))
    monkeypatch.setattr(custom_ops, "find_nvcc", lambda: None)
    monkeypatch.setattr(custom_ops.shutil, "which", lambda name: None)
    with pytest.raises(custom_ops.CustomOpsError, match="needs a C\\+\\+ compiler") as err:
        custom_ops.library()
    assert "g++" in err.value.hint


def test_a_failed_build_reports_the_compiler_and_leaves_no_library(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIMIZER_CACHE", str(tmp_path))
    monkeypatch.setattr(custom_ops, "find_nvcc", lambda: None)
    missing = tmp_path / "missing.cc"
    monkeypatch.setattr(custom_ops, "build_command", lambda out, nvcc: ["g++", str(missing), "-o", str(out)])
    with pytest.raises(custom_ops.CustomOpsError, match="building the optimizer.ops library failed"):
        custom_ops.library()
    assert not list((tmp_path / "custom_ops").rglob(custom_ops.NAME))


@pytest.mark.skipif(not CUDA, reason="the CUDA kernel needs onnxruntime's CUDA provider: onnxruntime-gpu and an NVIDIA GPU")
@pytest.mark.parametrize("graph", [False, True])
def test_swiglu_on_cuda_equals_the_cpu_kernel_and_runs_in_a_captured_graph(graph):
    import torch  # noqa: F401  (loads the CUDA libraries onnxruntime-gpu links against)

    x = (np.random.default_rng(7).standard_normal((4, 1, 2 * 8192)) * 3).astype(np.float16)
    (cpu,) = session(["CPUExecutionProvider"]).run(None, {"x": x})
    sess = session(["CUDAExecutionProvider"], cuda=True, enable_cuda_graph="1" if graph else "0")
    x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    y_dev = ort.OrtValue.ortvalue_from_shape_and_type(list(cpu.shape), np.float16, "cuda", 0)
    binding = sess.io_binding()
    binding.bind_ortvalue_input("x", x_dev)
    binding.bind_ortvalue_output("y", y_dev)
    for _ in range(3):  # with a graph: capture, then replays
        sess.run_with_iobinding(binding)
    np.testing.assert_allclose(y_dev.numpy().astype(np.float32), cpu.astype(np.float32), rtol=2e-3, atol=2e-3)


@pytest.mark.skipif(not CUDA, reason="the CUDA kernel needs onnxruntime's CUDA provider: onnxruntime-gpu and an NVIDIA GPU")
@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("op", FAMILY)
@pytest.mark.parametrize("rows,k,n", [((1, 1), 2048, 3072), ((3, 1), 8192, 2048), ((1, 1), 2048, 50000),
                                      ((2, 1), 2048, 300), ((2, 5), 2048, 3072), ((1, 1), 1000, 300),
                                      ((4, 1), 8192, 512)])
def test_the_linear_family_on_cuda_equals_the_cpu_kernels_and_runs_in_a_captured_graph(graph, op, rows, k, n):
    """1-4 rows with K a multiple of 8: the GEMV kernel does it all (K split over 1, 2, 4 and 8
    warps; the norm in shared memory where 2 x rows x K bytes fit 32 KiB, else our norm kernel
    first: the last case); more rows, or another K: our norm kernel, cuBLAS on onnxruntime's
    handle and the SwiGLU kernel; each eager, and captured into a graph and replayed."""
    import torch  # noqa: F401  (loads the CUDA libraries onnxruntime-gpu links against)

    if op.startswith("Norm") and k % 8:
        pytest.skip("the norm takes K in multiples of 8 (the CPU test shows the refusal)")
    feeds = linear_inputs(rows, k, 2 * n if op.endswith("SwiGLU") else n, seed=k + n, op=op)
    cpu = session(["CPUExecutionProvider"], model=linear_model(k, feeds["w"].shape[0], op)).run(None, feeds)
    sess = session(["CUDAExecutionProvider"], cuda=True, model=linear_model(k, feeds["w"].shape[0], op),
                   enable_cuda_graph="1" if graph else "0")
    assert_cuda_runs_equal_the_cpu(sess, feeds, cpu)


def assert_cuda_runs_equal_the_cpu(sess, feeds: dict[str, np.ndarray], cpu: list[np.ndarray]) -> None:
    """`sess` (CUDA) run three times on device copies of `feeds` bound at fixed addresses (with a
    graph: capture, then replays) gives the CPU session's outputs `cpu` (float16 tolerance)."""
    binding = sess.io_binding()
    values = {name: ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0) for name, a in feeds.items()}
    for name, value in values.items():
        binding.bind_ortvalue_input(name, value)
    outputs = [o.name for o in sess.get_outputs()]
    bound = [ort.OrtValue.ortvalue_from_shape_and_type(list(want.shape), np.float16, "cuda", 0) for want in cpu]
    for name, value in zip(outputs, bound):  # fixed addresses, as a captured graph needs
        binding.bind_ortvalue_output(name, value)
    for _ in range(3):
        sess.run_with_iobinding(binding)
    for name, value, want in zip(outputs, bound, cpu):
        np.testing.assert_allclose(value.numpy().astype(np.float32), want.astype(np.float32), rtol=1e-2, atol=1e-2,
                                   err_msg=name)


def test_every_source_beside_the_module_is_part_of_the_build_key():
    """A header or kernel file left out of SOURCES would not rebuild the library when it changes."""
    on_disk = {p.name for p in custom_ops.SOURCE_DIR.iterdir() if p.suffix in (".h", ".cuh", ".cc", ".cu")}
    assert on_disk == set(custom_ops.SOURCES)
    assert set(custom_ops.CUDA_SOURCES) | set(custom_ops.CPU_SOURCES) == {n for n in on_disk if n.endswith((".cc", ".cu"))}
