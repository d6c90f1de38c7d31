"""TensorRT: optimization profiles for an engine built with `--target tensorrt`, and its plan.

    optimize model <model> --target tensorrt --out engine-trt/
    optimize build-trt engine-trt/ --out engine-trt/model.plan

    from optimizer.tensorrt import build_plan
    summary = build_plan("engine-trt/", "engine-trt/model.plan")

A `--target tensorrt` engine's graph uses standard ONNX ops only (int4 weights as blocked
DequantizeLinear, FP8 as QuantizeLinear/DequantizeLinear, a concat KV cache), and its manifest
carries the `tensorrt` section written by `tensorrt_manifest_section`. Two optimization
profiles cover the engine's shapes (the usual split of TensorRT-LLM and onnxruntime's TensorRT
provider): profile 0, "context", runs the prompt (no past); profile 1, "generation", decodes
one token per row against a past of up to max_seq_len - 1 positions.

Precision comes from the graph itself: the network is created strongly typed, and no
precision builder flags are set (see `builder_flags`). Everything but `build_plan`'s last
steps is pure and runs without TensorRT; the build itself needs the `tensorrt` package and an
NVIDIA GPU.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from optimizer.core.artifact import load_engine
from optimizer.core.engine_format import MANIFEST
from optimizer.core.errors import EngineError, InputError, OptimizerError
from optimizer.core.progress import step

ONNX_OPSET = 21
PRECISIONS = ("int4", "int8", "fp8")  # low-precision formats a tensorrt-target graph may contain
PROFILE_NAMES = ("context", "generation")  # index in `profiles` = TensorRT profile index
DEFAULT_OPT_SEQ = 128  # prompt length the context profile is tuned for (bounded by max_seq_len)
_WEAK_TYPING_FLAGS = {"int4": "INT4", "int8": "INT8", "fp8": "FP8"}

Profile = dict[str, dict[str, list[int]]]  # input name -> {"min": dims, "opt": dims, "max": dims}


class TensorRTUnavailable(OptimizerError):
    """TensorRT cannot run here: the package is missing or no CUDA GPU is usable."""

    exit_code = 4


class TensorRTBuildError(OptimizerError):
    """TensorRT refused the engine's graph or failed to build a plan from it."""

    exit_code = 5


def shape_profiles(inputs: Sequence[tuple[str, Sequence[Any]]], max_batch: int, max_seq_len: int,
                   opt_batch: int = 1, opt_seq: int | None = None, opt_past: int | None = None) -> list[Profile]:
    """[context, generation] profiles for graph inputs given as (name, dims).

    Dims are ints (kept fixed) or the symbolic names batch, sequence, past_sequence and
    total_sequence (`onnx_ir` SymbolicDims are read by value). Ranges, as (min, opt, max):

        context:     batch (1, opt_batch, max_batch)  sequence (1, opt_seq, max_seq_len)
                     past_sequence (0, 0, 0)
        generation:  batch (1, opt_batch, max_batch)  sequence (1, 1, 1)
                     past_sequence (0, opt_past, max_seq_len - 1)

    total_sequence is past_sequence + sequence at min, opt and max in both, so every corner
    TensorRT checks is a shape the graph accepts, and it never exceeds max_seq_len (the rotary
    tables' length). opt_seq defaults to min(128, max_seq_len), opt_past to max_seq_len // 2."""
    opt_seq = min(DEFAULT_OPT_SEQ, max_seq_len) if opt_seq is None else opt_seq
    opt_past = max_seq_len // 2 if opt_past is None else opt_past
    for what, value, low, high in (("max batch", max_batch, 1, None), ("max sequence length", max_seq_len, 1, None),
                                   ("opt batch", opt_batch, 1, max_batch), ("opt sequence", opt_seq, 1, max_seq_len),
                                   ("opt past", opt_past, 0, max_seq_len - 1)):
        if value < low or (high is not None and value > high):
            raise InputError(f"{what} must be in [{low}, {high if high is not None else 'inf'}], got {value}")
    batch = (1, opt_batch, max_batch)
    ranges = [{"batch": batch, "sequence": (1, opt_seq, max_seq_len), "past_sequence": (0, 0, 0)},
              {"batch": batch, "sequence": (1, 1, 1), "past_sequence": (0, opt_past, max_seq_len - 1)}]
    for r in ranges:
        r["total_sequence"] = tuple(p + s for p, s in zip(r["past_sequence"], r["sequence"]))
    return [{name: _input_shapes(name, dims, r) for name, dims in inputs} for r in ranges]


def _input_shapes(name: str, dims: Sequence[Any], ranges: dict[str, tuple[int, ...]]) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {"min": [], "opt": [], "max": []}
    for d in dims:
        d = getattr(d, "value", d)  # onnx_ir SymbolicDim -> its name (or None)
        if isinstance(d, int):
            bounds = (d, d, d)
        elif isinstance(d, str) and d in ranges:
            bounds = ranges[d]
        else:
            raise InputError(f"input {name!r} has a dimension {d!r} that no TensorRT profile covers",
                             hint="known symbolic dimensions: " + ", ".join(sorted(ranges)))
        for key, value in zip(("min", "opt", "max"), bounds):
            shapes[key].append(value)
    return shapes


def tensorrt_manifest_section(model_inputs: Sequence[tuple[str, Sequence[Any]]], dtype: str,
                              precisions: Sequence[str], max_batch: int, max_seq_len: int) -> dict[str, Any]:
    """The manifest's `tensorrt` section (stored beside `"target": "tensorrt"`)."""
    if dtype not in ("fp16", "fp32"):
        raise InputError(f"TensorRT target dtype must be fp16 or fp32, got {dtype!r}")
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise InputError(f"unknown low-precision format(s) {unknown}", hint="known: " + ", ".join(PRECISIONS))
    return {"onnx_opset": ONNX_OPSET, "precisions": [p for p in PRECISIONS if p in precisions],
            "dtype": dtype, "profiles": shape_profiles(model_inputs, max_batch, max_seq_len)}


def builder_flags(section: dict[str, Any], strongly_typed: bool = True) -> list[str]:
    """Names of `tensorrt.BuilderFlag` members to set for an engine's `tensorrt` section.

    Strongly typed (the default, and what `build_plan` does): none. The graph already says
    every tensor's type (fp16/fp32 activations, int4 blocked DequantizeLinear, FP8 Q/DQ);
    NVIDIA's explicit-quantization guide says to use strong typing and not to specify
    precision flags, trtexec drops them with a warning under --stronglyTyped, and
    BuilderFlag.FP16/INT8/FP8/INT4 are deprecated since TensorRT 10.12 and gone in 11 (where
    every network is strongly typed). Weakly typed (`strongly_typed=False`, TensorRT 10 only):
    FP16 for an fp16 graph, INT4 / INT8 / FP8 for the formats it contains."""
    if strongly_typed:
        return []
    flags = ["FP16"] if section["dtype"] == "fp16" else []
    return flags + [_WEAK_TYPING_FLAGS[p] for p in PRECISIONS if p in section["precisions"]]


def check_tensorrt() -> ModuleType:
    """Import `tensorrt` and make sure it can create a builder (which needs a CUDA GPU)."""
    trt = _import_tensorrt()
    _new_builder(trt, trt.Logger(trt.Logger.ERROR))
    return trt


def _import_tensorrt() -> ModuleType:
    hint = ("install NVIDIA's wheels with `pip install tensorrt` (needs an NVIDIA GPU with a driver that "
            "matches its CUDA version); the engine itself still runs on onnxruntime without it")
    try:
        import tensorrt
    except ModuleNotFoundError as exc:
        if exc.name != "tensorrt":
            raise TensorRTUnavailable(f"the `tensorrt` Python package failed to import: {exc}", hint=hint) from exc
        raise TensorRTUnavailable("the `tensorrt` Python package is not installed", hint=hint) from exc
    except (ImportError, OSError) as exc:  # the wheel is there, its CUDA libraries are not
        raise TensorRTUnavailable(f"the `tensorrt` Python package failed to import: {exc}", hint=hint) from exc
    return tensorrt


def _new_builder(trt: ModuleType, logger: Any) -> Any:
    try:
        builder = trt.Builder(logger)  # initialises CUDA: fails (or returns null) without a usable GPU
        reason = "the builder could not be created"
    except Exception as exc:  # pybind raises TypeError when createInferBuilder returns nullptr
        builder, reason = None, str(exc)
    if not builder:
        raise TensorRTUnavailable(
            f"TensorRT {getattr(trt, '__version__', '?')} is installed, but no CUDA GPU is usable ({reason})",
            hint="TensorRT builds plans on an NVIDIA GPU: check that `nvidia-smi` lists one, that its driver "
                 "supports this TensorRT's CUDA version and that CUDA_VISIBLE_DEVICES does not hide it")
    return builder


def build_plan(engine_dir: str | Path, out_path: str | Path, workspace_gb: float = 8.0, quiet: bool = False,
               overwrite: bool = False, strongly_typed: bool = True) -> dict[str, Any]:
    """Build a serialized TensorRT plan from a `--target tensorrt` engine and write it to out_path.

    Every check (manifest and checksums, output path, TensorRT and a GPU) runs before the
    build; the plan is written to a temporary file beside out_path and renamed into place, so
    a failure or Ctrl-C leaves neither a partial plan nor a temporary file."""
    engine = load_engine(engine_dir, verify=True, quiet=quiet)
    section = engine.manifest.get("tensorrt")
    if engine.manifest.get("target") != "tensorrt" or not isinstance(section, dict):
        raise InputError(f"{engine.path} was not built for TensorRT (its manifest has no tensorrt section)",
                         hint="rebuild it with `optimize model <model> --target tensorrt --out <dir>`")
    if not section.get("profiles"):
        raise EngineError(f"{engine.path}/{MANIFEST}: the tensorrt section has no optimization profiles",
                          hint="the engine is corrupt: rebuild it with `optimize model ... --target tensorrt`")
    out = _check_out_path(Path(out_path).expanduser(), engine, overwrite)
    if workspace_gb <= 0:
        raise InputError(f"workspace must be positive, got {workspace_gb} GB")
    trt = _import_tensorrt()
    flags = builder_flags(section, strongly_typed)
    missing = [f for f in flags if not hasattr(trt.BuilderFlag, f)]
    if missing:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} has no BuilderFlag {', '.join(missing)}",
                                  hint="build strongly typed (the default): TensorRT 11 removed weak typing")
    logger = trt.Logger(trt.Logger.ERROR if quiet else trt.Logger.WARNING)
    builder = _new_builder(trt, logger)

    start = time.perf_counter()
    with step(f"parse {engine.model_path.name} with TensorRT {trt.__version__}", quiet):
        network_flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
        network = builder.create_network(network_flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(engine.model_path)):  # reads model.onnx.data beside it
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise TensorRTBuildError(f"TensorRT could not parse {engine.model_path} ({len(errors)} error(s)):\n  "
                                     + "\n  ".join(errors or ["no error reported"]),
                                     hint="a --target tensorrt engine uses standard ONNX ops only: rebuild "
                                          "it with `optimize model ... --target tensorrt`")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for index, shapes in enumerate(section["profiles"]):
        profile = builder.create_optimization_profile()
        for name, s in shapes.items():
            try:
                profile.set_shape(name, s["min"], s["opt"], s["max"])
            except (RuntimeError, TypeError, ValueError) as exc:
                raise TensorRTBuildError(f"TensorRT rejected the {_profile_name(index)} profile's shapes "
                                         f"for input {name!r}: {exc}") from exc
        if config.add_optimization_profile(profile) < 0:
            raise TensorRTBuildError(f"TensorRT rejected optimization profile {index} ({_profile_name(index)})")
    with step("build TensorRT plan (minutes on large models)", quiet):
        plan = builder.build_serialized_network(network, config)
    if not plan:
        fp8 = " FP8 needs compute capability 8.9 or newer (Ada, Hopper)." if "fp8" in section["precisions"] else ""
        raise TensorRTBuildError("TensorRT failed to build a plan from the engine",
                                 hint="rerun without quiet to see TensorRT's log; a larger workspace_gb may help."
                                      + fp8)
    size = _write_atomically(plan, out)
    return {"plan": str(out), "bytes": size, "profiles": [_profile_name(i) for i in range(len(section["profiles"]))],
            "flags": flags, "strongly_typed": strongly_typed, "tensorrt_version": trt.__version__,
            "seconds": round(time.perf_counter() - start, 3)}


def _profile_name(index: int) -> str:
    return PROFILE_NAMES[index] if index < len(PROFILE_NAMES) else f"profile {index}"


def _check_out_path(out: Path, engine: Any, overwrite: bool) -> Path:
    if out.is_dir():
        raise InputError(f"output path {out} is a directory", hint="pass a file path, e.g. engine-trt/model.plan")
    if not out.parent.is_dir():
        raise InputError(f"output directory {out.parent} does not exist", hint="create it, or choose another --out")
    if not os.access(out.parent, os.W_OK):
        raise InputError(f"output directory {out.parent} is not writable", hint="choose another --out")
    engine_files = {(engine.path / rel).resolve() for rel in [MANIFEST, *engine.manifest.get("files", {})]}
    if out.resolve() in engine_files:
        raise InputError(f"{out} is a file of the engine itself", hint="choose another name, e.g. model.plan")
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists", hint="pass --overwrite to replace it, or choose another --out")
    return out


def _write_atomically(data: Any, out: Path) -> int:
    """Write `data` (bytes or TensorRT's IHostMemory, a buffer) to `out` through a temporary file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(data))
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a plan is an ordinary file
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out.stat().st_size
