"""Writing the engine's files into the staging directory: the graph (weights inline, or in
model.onnx.data when large) and the tokenizer and generation config."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from optimizer.core.errors import InputError
from optimizer.models.loader import LoadedModel

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
EXTERNAL_DATA_THRESHOLD = 256 << 20  # weights larger than this go to model.onnx.data


def ir_dump_dir(out: Path) -> Path:
    """Where --dump-ir-after writes: beside the engine, so a failed build still leaves the dumps."""
    return out.with_name(out.name + ".ir")


def write_model(model: ir.Model, directory: Path, external_data: str, full_check: bool = False) -> dict[str, Any]:
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values()
                       if v.const_value is not None)
    external = external_data == "always" or (external_data == "auto" and weight_bytes > EXTERNAL_DATA_THRESHOLD)
    check_free_space(directory, weight_bytes)
    path = directory / MODEL_FILE
    ir.save(model, path, external_data=DATA_FILE if external else None)
    onnx.checker.check_model(str(path), full_check=full_check)  # by path: external data and > 2 GB
    return {"file": MODEL_FILE, "external_data": DATA_FILE if external else None,
            "weight_bytes": weight_bytes, "opset": dict(model.opset_imports),
            "inputs": [v.name for v in model.graph.inputs],
            "input_shapes": [(v.name, [d if isinstance(d, int) else str(d) for d in v.shape])
                             for v in model.graph.inputs],
            "outputs": [v.name for v in model.graph.outputs]}


def check_free_space(directory: Path, weight_bytes: int) -> None:
    """Refuse before writing when the disk cannot hold the weights (the write itself still turns a
    full disk into an error: optimizer.core.artifact.staging_dir)."""
    free = shutil.disk_usage(directory).free
    if weight_bytes > free:
        raise InputError(f"the engine's weights need {weight_bytes / 1e6:,.1f} MB and the disk holding "
                         f"{directory.parent} has {free / 1e6:,.1f} MB free",
                         hint="free some space or choose an --out path on another disk; nothing was written")


def write_tokenizer(loaded: LoadedModel, directory: Path) -> list[str]:
    before = {p.name for p in directory.iterdir()}
    loaded.model.generation_config.save_pretrained(directory)
    if loaded.tokenizer is None:
        return []
    try:
        loaded.tokenizer.save_pretrained(directory)
    except OSError:
        raise
    except Exception as exc:  # the Rust tokenizer reports I/O errors as plain Exceptions: "... (os error 28)"
        found = re.search(r"os error (\d+)", str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(directory)) from exc
    return sorted({p.name for p in directory.iterdir()} - before - {"generation_config.json"})
