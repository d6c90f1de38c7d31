"""TensorRT target: optimization profiles, the manifest section, builder flags, and build_plan.

TensorRT itself is rarely installed where these tests run: build_plan's TensorRT calls are
exercised against a small fake `tensorrt` module that records them, and the real build runs
only where `tensorrt` imports and a GPU is usable. The engines here are written by hand: a
tiny one-layer attention graph of standard ONNX ops with the real engine interface.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.core.artifact import load_engine, write_manifest
from optimizer.core.errors import InputError, OptimizerError
from optimizer.tensorrt import (PROFILE_NAMES, TensorRTBuildError, TensorRTUnavailable, build_plan,
                                builder_flags, check_tensorrt, shape_profiles, tensorrt_manifest_section)

KV_HEADS, HEAD_DIM, VOCAB, MAX_POS = 2, 4, 16, 64
HIDDEN = KV_HEADS * HEAD_DIM
KV_DIMS = ["batch", KV_HEADS, "past_sequence", HEAD_DIM]
INPUTS = [("input_ids", ["batch", "sequence"]), ("attention_mask", ["batch", "total_sequence"]),
          ("position_ids", ["batch", "sequence"]),
          ("past_key_values.0.key", KV_DIMS), ("past_key_values.0.value", KV_DIMS)]


def tiny_graph() -> onnx.ModelProto:
    """One attention layer over a concat KV cache: the mask's length must be past + sequence."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("embed", rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)),
        ("positions", rng.standard_normal((MAX_POS, HIDDEN)).astype(np.float32)),
        ("head", rng.standard_normal((HIDDEN, VOCAB)).astype(np.float32)),
        ("split_heads", np.array([0, 0, KV_HEADS, HEAD_DIM], np.int64)),
        ("merge_heads", np.array([0, 0, HIDDEN], np.int64)),
        ("one", np.array(1.0, np.float32)), ("neg", np.array(-1e4, np.float32)),
        ("mask_axes", np.array([1, 2], np.int64)))]
    n = helper.make_node
    nodes = [
        n("Gather", ["embed", "input_ids"], ["tok"]), n("Gather", ["positions", "position_ids"], ["pos"]),
        n("Add", ["tok", "pos"], ["x"]), n("Reshape", ["x", "split_heads"], ["x4"]),
        n("Transpose", ["x4"], ["new"], perm=[0, 2, 1, 3]),
        n("Concat", ["past_key_values.0.key", "new"], ["present.0.key"], axis=2),
        n("Concat", ["past_key_values.0.value", "new"], ["present.0.value"], axis=2),
        n("Transpose", ["present.0.key"], ["kt"], perm=[0, 1, 3, 2]), n("MatMul", ["new", "kt"], ["scores"]),
        n("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT), n("Sub", ["one", "maskf"], ["inv"]),
        n("Mul", ["inv", "neg"], ["bias2"]), n("Unsqueeze", ["bias2", "mask_axes"], ["bias"]),
        n("Add", ["scores", "bias"], ["masked"]), n("Softmax", ["masked"], ["probs"], axis=-1),
        n("MatMul", ["probs", "present.0.value"], ["ctx"]), n("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
        n("Reshape", ["ctx_t", "merge_heads"], ["h"]), n("MatMul", ["h", "head"], ["logits"]),
    ]
    kinds = {"input_ids": TensorProto.INT64, "attention_mask": TensorProto.INT64,
             "position_ids": TensorProto.INT64}
    inputs = [helper.make_tensor_value_info(name, kinds.get(name, TensorProto.FLOAT), dims) for name, dims in INPUTS]
    present = ["batch", KV_HEADS, "total_sequence", HEAD_DIM]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", VOCAB]),
               helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, present),
               helper.make_tensor_value_info("present.0.value", TensorProto.FLOAT, present)]
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def model_inputs(path: Path) -> list[tuple[str, list]]:
    """(name, dims) of a graph's inputs, as the pipeline reads them (onnx_ir dims)."""
    return [(v.name, list(v.shape)) for v in ir.load(path).graph.inputs]


def make_engine(root: Path, tensorrt: bool = True, dtype: str = "fp32", precisions=(),
                max_batch: int = 2, max_seq_len: int = 32) -> Path:
    directory = root / "engine"
    directory.mkdir()
    onnx.save(tiny_graph(), directory / "model.onnx")
    # the sections load_engine checks are there (empty: these tests read only the tensorrt one)
    manifest = {"dtype": dtype, "model": {"file": "model.onnx", "external_data": None},
                "kv_cache": {}, "architecture": {}, "generation": {}}
    if tensorrt:
        manifest["target"] = "tensorrt"
        manifest["tensorrt"] = tensorrt_manifest_section(model_inputs(directory / "model.onnx"), dtype,
                                                         list(precisions), max_batch, max_seq_len)
    write_manifest(directory, manifest, quiet=True)
    return directory


def listing(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


# --- profiles ------------------------------------------------------------------------------

def test_context_and_generation_profiles():
    context, generation = shape_profiles(INPUTS, max_batch=4, max_seq_len=256)
    assert PROFILE_NAMES == ("context", "generation")
    assert context["input_ids"] == {"min": [1, 1], "opt": [1, 128], "max": [4, 256]}
    assert context["attention_mask"] == {"min": [1, 1], "opt": [1, 128], "max": [4, 256]}
    assert context["past_key_values.0.key"] == {"min": [1, 2, 0, 4], "opt": [1, 2, 0, 4], "max": [4, 2, 0, 4]}
    assert generation["input_ids"] == generation["position_ids"] == {"min": [1, 1], "opt": [1, 1], "max": [4, 1]}
    assert generation["past_key_values.0.value"] == {"min": [1, 2, 0, 4], "opt": [1, 2, 128, 4],
                                                     "max": [4, 2, 255, 4]}
    assert generation["attention_mask"] == {"min": [1, 1], "opt": [1, 129], "max": [4, 256]}


@pytest.mark.parametrize("max_batch,max_seq_len,opts", [
    (1, 1, {}), (1, 2, {}), (8, 100, {}), (8, 4096, {}), (3, 17, {"opt_batch": 3, "opt_seq": 17, "opt_past": 16}),
    (5, 64, {"opt_batch": 2, "opt_seq": 1, "opt_past": 0})])
def test_profiles_are_ordered_bounded_and_consistent(max_batch, max_seq_len, opts):
    profiles = shape_profiles(INPUTS, max_batch, max_seq_len, **opts)
    assert len(profiles) == 2
    for profile in profiles:
        assert set(profile) == {name for name, _ in INPUTS}
        for shapes in profile.values():
            for lo, mid, hi in zip(shapes["min"], shapes["opt"], shapes["max"]):
                assert lo <= mid <= hi
        for corner in ("min", "opt", "max"):
            batch, seq = profile["input_ids"][corner]
            mask_batch, total = profile["attention_mask"][corner]
            past_batch, heads, past, head_dim = profile["past_key_values.0.key"][corner]
            assert batch == mask_batch == past_batch and profile["position_ids"][corner] == [batch, seq]
            assert (heads, head_dim) == (KV_HEADS, HEAD_DIM)
            assert total == past + seq and 1 <= total <= max_seq_len and 1 <= batch <= max_batch
    assert profiles[1]["input_ids"]["max"][1] == 1  # generation: one new token per row
    assert profiles[0]["past_key_values.0.key"]["max"][2] == 0  # context: no past


def test_opt_sequence_is_bounded_by_max():
    context, generation = shape_profiles(INPUTS, max_batch=2, max_seq_len=16)
    assert context["input_ids"]["opt"] == [1, 16]
    assert generation["past_key_values.0.key"]["opt"][2] == 8


@pytest.mark.parametrize("kwargs,what", [
    ({"max_batch": 0, "max_seq_len": 8}, "max batch"), ({"max_batch": 1, "max_seq_len": 0}, "max sequence length"),
    ({"max_batch": 2, "max_seq_len": 8, "opt_batch": 3}, "opt batch"),
    ({"max_batch": 2, "max_seq_len": 8, "opt_seq": 9}, "opt sequence"),
    ({"max_batch": 2, "max_seq_len": 8, "opt_past": 8}, "opt past")])
def test_bad_profile_bounds_are_refused(kwargs, what):
    with pytest.raises(InputError, match=what):
        shape_profiles(INPUTS, **kwargs)


@pytest.mark.parametrize("dim", ["slots", None])
def test_unknown_dim_names_the_input_and_the_dim(dim):
    with pytest.raises(InputError, match=f"input 'kv_slots' has a dimension {dim!r}") as exc:
        shape_profiles(INPUTS + [("kv_slots", ["batch", dim])], 2, 8)
    assert "past_sequence" in exc.value.hint and "total_sequence" in exc.value.hint


def test_onnx_ir_dims_are_read_by_name(tmp_path):
    onnx.save(tiny_graph(), tmp_path / "m.onnx")
    assert shape_profiles(model_inputs(tmp_path / "m.onnx"), 3, 10) == shape_profiles(INPUTS, 3, 10)


def test_every_profile_corner_runs_in_the_graph():
    """The shapes at each profile's min, opt and max are ones the graph accepts (mask = past + new)."""
    session = ort.InferenceSession(tiny_graph().SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for profile in shape_profiles(INPUTS, max_batch=3, max_seq_len=12, opt_seq=5):
        for corner in ("min", "opt", "max"):
            shape = {name: s[corner] for name, s in profile.items()}
            feeds = {"input_ids": rng.integers(0, VOCAB, shape["input_ids"]),
                     "attention_mask": np.ones(shape["attention_mask"], np.int64),
                     "position_ids": np.zeros(shape["position_ids"], np.int64)}
            for name in ("past_key_values.0.key", "past_key_values.0.value"):
                feeds[name] = rng.standard_normal(shape[name]).astype(np.float32)
            logits, present_k, _ = session.run(None, feeds)
            assert logits.shape == (*shape["input_ids"], VOCAB)
            assert list(present_k.shape) == [shape["past_key_values.0.key"][0], KV_HEADS,
                                             shape["attention_mask"][1], HEAD_DIM]


# --- manifest section and flags ------------------------------------------------------------

def test_manifest_section_round_trip(tmp_path):
    section = tensorrt_manifest_section(INPUTS, "fp16", ["fp8", "int4", "int4"], max_batch=4, max_seq_len=64)
    assert list(section) == ["onnx_opset", "precisions", "dtype", "profiles"]
    assert section["onnx_opset"] == 21 and section["precisions"] == ["int4", "fp8"] and section["dtype"] == "fp16"
    assert section["profiles"] == shape_profiles(INPUTS, 4, 64)
    assert json.loads(json.dumps(section)) == section
    engine = make_engine(tmp_path, dtype="fp16", precisions=["int4"], max_batch=4, max_seq_len=64)
    loaded = load_engine(engine).manifest
    assert loaded["target"] == "tensorrt" and loaded["tensorrt"]["precisions"] == ["int4"]
    assert loaded["tensorrt"]["profiles"] == shape_profiles(INPUTS, 4, 64)


@pytest.mark.parametrize("dtype,precisions", [("bf16", []), ("fp16", ["nf4"])])
def test_manifest_section_refuses_unknown_types(dtype, precisions):
    with pytest.raises(InputError):
        tensorrt_manifest_section(INPUTS, dtype, precisions, 1, 8)


@pytest.mark.parametrize("dtype,precisions,weak", [
    ("fp32", [], []), ("fp16", [], ["FP16"]), ("fp16", ["int4"], ["FP16", "INT4"]), ("fp32", ["fp8"], ["FP8"]),
    ("fp16", ["fp8"], ["FP16", "FP8"]), ("fp16", ["fp8", "int4"], ["FP16", "INT4", "FP8"]),
    ("fp16", ["int8"], ["FP16", "INT8"])])
def test_builder_flags(dtype, precisions, weak):
    section = tensorrt_manifest_section(INPUTS, dtype, precisions, 1, 8)
    assert builder_flags(section) == []  # strongly typed: precision comes from the graph
    assert builder_flags(section, strongly_typed=False) == weak


# --- TensorRT missing ----------------------------------------------------------------------

def test_check_tensorrt_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails, even where TensorRT exists
    with pytest.raises(TensorRTUnavailable, match="`tensorrt` Python package is not installed") as exc:
        check_tensorrt()
    assert "pip install tensorrt" in exc.value.hint and "onnxruntime" in exc.value.hint
    assert "NVIDIA GPU" in exc.value.hint
    assert isinstance(exc.value, OptimizerError) and exc.value.exit_code not in (0, InputError.exit_code)


@pytest.mark.parametrize("builder", [TypeError("factory function returned nullptr"), None])
def test_check_tensorrt_without_a_gpu(monkeypatch, builder):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt([], builder=builder))
    with pytest.raises(TensorRTUnavailable, match="installed, but no CUDA GPU is usable") as exc:
        check_tensorrt()
    assert "nvidia-smi" in exc.value.hint


def test_build_plan_refuses_an_engine_not_built_for_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # checked before TensorRT is even imported
    engine = make_engine(tmp_path, tensorrt=False)
    with pytest.raises(InputError, match="was not built for TensorRT") as exc:
        build_plan(engine, tmp_path / "model.plan", quiet=True)
    assert "optimize model" in exc.value.hint and "--target tensorrt" in exc.value.hint
    assert not (tmp_path / "model.plan").exists()


def test_build_plan_refuses_bad_output_paths(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = make_engine(tmp_path)
    (tmp_path / "old.plan").write_bytes(b"old")
    for out, message in ((tmp_path, "is a directory"), (tmp_path / "missing" / "m.plan", "does not exist"),
                         (engine / "model.onnx", "a file of the engine itself"),
                         (engine / "manifest.json", "a file of the engine itself"),
                         (tmp_path / "old.plan", "already exists")):
        with pytest.raises(InputError, match=message):
            build_plan(engine, out, quiet=True)
    assert (tmp_path / "old.plan").read_bytes() == b"old"


def test_build_plan_without_tensorrt_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = make_engine(tmp_path)
    before, before_engine = listing(tmp_path), listing(engine)
    with pytest.raises(TensorRTUnavailable, match="not installed"):
        build_plan(engine, tmp_path / "model.plan", quiet=True)
    assert listing(tmp_path) == before and listing(engine) == before_engine


# --- build_plan against a fake tensorrt module ---------------------------------------------

class ParserError:
    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def fake_tensorrt(calls: list, builder=True, parse_errors=(), plan=b"fake plan bytes", on_build=None):
    """A stand-in for the `tensorrt` module (TensorRT 10's Python names) that records its calls."""
    state = {"profiles": 0}

    class Logger:
        ERROR, WARNING = "ERROR", "WARNING"

        def __init__(self, severity):
            calls.append(("logger", severity))

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, min, opt, max):
            self.shapes[name] = {"min": list(min), "opt": list(opt), "max": list(max)}

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("memory_pool", pool, size))

        def set_flag(self, flag):
            calls.append(("flag", flag))

        def add_optimization_profile(self, profile):
            calls.append(("profile", profile.shapes))
            state["profiles"] += 1
            return state["profiles"] - 1

    class Builder:
        def __init__(self, logger):
            if isinstance(builder, Exception):
                raise builder
            self.ok = builder

        def __bool__(self):
            return bool(self.ok)

        def create_network(self, flags):
            calls.append(("network", flags))
            return "network"

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build", network))
            if on_build:
                on_build()
            return plan

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            calls.append(("parse", path))
            self.num_errors = len(parse_errors)
            return not parse_errors

        def get_error(self, index):
            return ParserError(parse_errors[index])

    return SimpleNamespace(__version__="10.99.0-fake", Logger=Logger, Builder=Builder, OnnxParser=OnnxParser,
                           NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1),
                           MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
                           BuilderFlag=SimpleNamespace(FP16="FP16", INT8="INT8", FP8="FP8", INT4="INT4"))


def test_build_plan_calls_tensorrt_and_writes_the_plan_atomically(tmp_path, monkeypatch):
    calls: list = []
    out = tmp_path / "model.plan"
    seen_during_build = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(
        calls, on_build=lambda: seen_during_build.append(listing(tmp_path))))
    engine = make_engine(tmp_path, dtype="fp16", precisions=["int4"], max_batch=4, max_seq_len=32)
    summary = build_plan(engine, out, workspace_gb=2, quiet=True)

    assert out.read_bytes() == b"fake plan bytes" and seen_during_build == [{"engine"}]
    assert listing(tmp_path) == {"engine", "model.plan"}  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's private one
    section = load_engine(engine).manifest["tensorrt"]
    assert ("network", 1 << 1) in calls  # strongly typed
    assert ("parse", str(engine / "model.onnx")) in calls
    assert ("memory_pool", "WORKSPACE", 2 << 30) in calls
    assert [c[1] for c in calls if c[0] == "profile"] == section["profiles"]
    assert not [c for c in calls if c[0] == "flag"]  # no precision flags on a strongly typed network
    assert ("logger", "ERROR") in calls
    assert [c[0] for c in calls if c[0] in ("parse", "profile", "build")] == ["parse", "profile", "profile", "build"]
    assert summary["plan"] == str(out) and summary["bytes"] == len(b"fake plan bytes")
    assert summary["profiles"] == ["context", "generation"] and summary["flags"] == []
    assert summary["strongly_typed"] is True and summary["tensorrt_version"] == "10.99.0-fake"
    assert summary["seconds"] >= 0


def test_build_plan_weakly_typed_sets_precision_flags(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls))
    engine = make_engine(tmp_path, dtype="fp16", precisions=["fp8"])
    summary = build_plan(engine, tmp_path / "p.plan", quiet=False, strongly_typed=False)
    assert ("network", 0) in calls and ("logger", "WARNING") in calls
    assert [c[1] for c in calls if c[0] == "flag"] == ["FP16", "FP8"] == summary["flags"]


def test_weak_typing_flags_missing_in_this_tensorrt_is_refused(tmp_path, monkeypatch):
    trt = fake_tensorrt([])
    trt.BuilderFlag = SimpleNamespace()  # TensorRT 11 has no FP16 / INT8 / FP8 / INT4 builder flags
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    engine = make_engine(tmp_path, dtype="fp16")
    with pytest.raises(TensorRTUnavailable, match="no BuilderFlag FP16"):
        build_plan(engine, tmp_path / "p.plan", quiet=True, strongly_typed=False)


def test_build_plan_reports_every_parser_error(tmp_path, monkeypatch):
    errors = ("node 3 (Foo): unsupported operator", "node 7 (Bar): bad attribute")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt([], parse_errors=errors))
    engine = make_engine(tmp_path)
    before = listing(tmp_path)
    with pytest.raises(TensorRTBuildError, match=r"2 error\(s\)") as exc:
        build_plan(engine, tmp_path / "model.plan", quiet=True)
    assert all(e in exc.value.message for e in errors) and "--target tensorrt" in exc.value.hint
    assert listing(tmp_path) == before


def test_failed_build_or_write_leaves_nothing(tmp_path, monkeypatch):
    engine = make_engine(tmp_path, precisions=["fp8"])
    out = tmp_path / "model.plan"
    before = listing(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt([], plan=None))
    with pytest.raises(TensorRTBuildError, match="failed to build") as exc:
        build_plan(engine, out, quiet=True)
    assert "compute capability 8.9" in exc.value.hint and listing(tmp_path) == before

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt([], builder=None))
    with pytest.raises(TensorRTUnavailable, match="no CUDA GPU"):
        build_plan(engine, out, quiet=True)
    assert listing(tmp_path) == before

    out.write_bytes(b"old plan")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt([]))

    def interrupted(src, dst):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            build_plan(engine, out, quiet=True, overwrite=True)
    assert out.read_bytes() == b"old plan" and listing(tmp_path) == before | {"model.plan"}
    build_plan(engine, out, quiet=True, overwrite=True)
    assert out.read_bytes() == b"fake plan bytes" and listing(tmp_path) == before | {"model.plan"}


# --- the real build ------------------------------------------------------------------------

def test_real_tensorrt_build(tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed here: the real build runs where it is")
    try:
        check_tensorrt()
    except TensorRTUnavailable as exc:
        pytest.skip(f"TensorRT is installed but cannot build here: {exc.message}")
    engine = make_engine(tmp_path, max_batch=2, max_seq_len=32)
    summary = build_plan(engine, tmp_path / "model.plan", workspace_gb=1, quiet=True)
    assert summary["bytes"] > 0 and summary["profiles"] == ["context", "generation"]
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    plan = runtime.deserialize_cuda_engine((tmp_path / "model.plan").read_bytes())
    assert plan is not None and plan.num_optimization_profiles == 2
    names = {plan.get_tensor_name(i) for i in range(plan.num_io_tensors)}
    assert {"input_ids", "attention_mask", "logits", "present.0.key"} <= names
