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


def linear_model(k: int, n: int) -> bytes:
    node = helper.make_node("Linear", ["x", "w"], ["y"], domain=custom_ops.DOMAIN)
    graph = helper.make_graph([node], "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["b", "s", k]),
                                                 helper.make_tensor_value_info("w", TensorProto.FLOAT16, [n, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid(custom_ops.DOMAIN, 1)])
    model.ir_version = 10
    return model.SerializeToString()


def reference(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    gate, up = x[..., :half].astype(np.float32), x[..., half:].astype(np.float32)
    return gate / (1 + np.exp(-gate)) * up


def session(providers, cuda=False, model=None, **provider_options):
    options = ort.SessionOptions()
    custom_ops.register(options, cuda=cuda)
    return ort.InferenceSession(model or swiglu_model(["b", "s", "n"]), options,
                                providers=[(p, provider_options) if p.startswith("CUDA") else p for p in providers])


def linear_inputs(rows: tuple[int, int], k: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((*rows, k)).astype(np.float16),
            (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float16))


@pytest.mark.parametrize("shape", [(1, 1, 16), (2, 3, 10), (3, 5, 2 * 129)])
def test_swiglu_on_the_cpu_is_silu_of_the_gate_times_up(shape):
    x = (np.random.default_rng(sum(shape)).standard_normal(shape) * 3).astype(np.float16)
    (y,) = session(["CPUExecutionProvider"]).run(None, {"x": x})
    assert y.shape == shape[:-1] + (shape[-1] // 2,) and y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float32), reference(x), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("rows,k,n", [((1, 1), 64, 24), ((2, 3), 40, 7), ((1, 9), 100, 33)])
def test_linear_on_the_cpu_is_x_times_the_weight_transposed(rows, k, n):
    x, w = linear_inputs(rows, k, n)
    (y,) = session(["CPUExecutionProvider"], model=linear_model(k, n)).run(None, {"x": x, "w": w})
    assert y.shape == (*rows, n) and y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float32), x.astype(np.float32) @ w.astype(np.float32).T, rtol=2e-3, atol=2e-3)


def test_a_linear_weight_of_the_wrong_width_is_refused_with_the_reason():
    options = ort.SessionOptions()
    custom_ops.register(options)
    sess = ort.InferenceSession(linear_model("k", 4), options, providers=["CPUExecutionProvider"])  # K symbolic
    with pytest.raises(Exception, match="weight must be \\(N, K\\), K the input's last dimension"):
        sess.run(None, {"x": np.zeros((1, 1, 8), np.float16), "w": np.zeros((4, 6), np.float16)})


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
@pytest.mark.parametrize("rows,k,n", [((1, 1), 2048, 3072), ((3, 1), 8192, 2048), ((1, 1), 2048, 50000),
                                      ((2, 1), 2048, 300), ((2, 5), 2048, 3072), ((1, 1), 1001, 300)])
def test_linear_on_cuda_equals_the_cpu_kernel_and_runs_in_a_captured_graph(graph, rows, k, n):
    """1-4 rows with K a multiple of 8: the GEMV kernel (K split over 1, 2, 4 and 8 warps); more
    rows, or another K: cuBLAS on onnxruntime's handle; both captured into a graph and replayed."""
    import torch  # noqa: F401  (loads the CUDA libraries onnxruntime-gpu links against)

    x, w = linear_inputs(rows, k, n, seed=k + n)
    (cpu,) = session(["CPUExecutionProvider"], model=linear_model(k, n)).run(None, {"x": x, "w": w})
    sess = session(["CUDAExecutionProvider"], cuda=True, model=linear_model(k, n),
                   enable_cuda_graph="1" if graph else "0")
    binding = sess.io_binding()
    values = {name: ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0) for name, a in (("x", x), ("w", w))}
    for name, value in values.items():
        binding.bind_ortvalue_input(name, value)
    y_dev = ort.OrtValue.ortvalue_from_shape_and_type(list(cpu.shape), np.float16, "cuda", 0)
    binding.bind_ortvalue_output("y", y_dev)
    for _ in range(3):  # with a graph: capture, then replays
        sess.run_with_iobinding(binding)
    np.testing.assert_allclose(y_dev.numpy().astype(np.float32), cpu.astype(np.float32), rtol=1e-2, atol=1e-2)
