"""Finished decoder layers of a calibrated build, kept on disk so a killed build resumes.

A calibrated method (AWQ, GPTQ, FP8) quantizes layer after layer (calibration.sequential);
after each layer the store writes what that layer became: the codes of its quantized linears
and every other parameter of the layer that the method may have changed (norm weights and
biases that AWQ's scales fold into), one safetensors file per layer, written atomically.
`--resume` restores layers 0..k-1 from it instead of calibrating them again; their outputs,
the next layer's inputs, are recomputed by one forward pass (cheap next to calibration).

The directory holds `progress.json` (what the layers were made with: the method's settings,
the calibration windows' hash, the source files) and `layer-NNNN.safetensors`; it has no
manifest, so nothing takes it for an engine. Progress made with other settings is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from calibration.rtn import QuantizedLinear, QuantSpec
from optimizer.core.errors import InputError

PROGRESS_FILE = "progress.json"
_CODE_PARTS = ("qweight", "scales", "zeros")


def progress_dir(out: Path) -> Path:
    """Where a build of `out` keeps its finished layers: hidden, beside it."""
    return out.parent / f".{out.name}.layers"


class LayerStore:
    def __init__(self, directory: Path, fingerprint: dict[str, Any], resume: bool) -> None:
        """Open the store; without `resume`, earlier progress is discarded; with it, progress
        made with another fingerprint is an error."""
        self.directory = directory
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as stored: plain JSON values
        found = self._stored_fingerprint()
        if resume and found is not None and found != self.fingerprint:
            changed = sorted(k for k in set(found) | set(self.fingerprint) if found.get(k) != self.fingerprint.get(k))
            raise InputError(f"the progress kept at {directory} was made with other settings ({', '.join(changed)})",
                             hint="drop --resume to start over, or resume with the settings of the killed build")
        if not resume or found is None:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            _write_atomic(directory / PROGRESS_FILE, json.dumps(self.fingerprint, indent=1).encode())
        self.finished = self._count_finished()

    def _stored_fingerprint(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.directory / PROGRESS_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def _path(self, index: int) -> Path:
        return self.directory / f"layer-{index:04d}.safetensors"

    def _count_finished(self) -> int:
        n = 0
        while self._path(n).is_file():
            n += 1
        return n

    def save(self, index: int, layer_prefix: str, layer: torch.nn.Module, codes: dict[str, QuantizedLinear]) -> None:
        """Record layer `index` (module names under `layer_prefix`) as finished."""
        tensors: dict[str, torch.Tensor] = {}
        specs: dict[str, Any] = {}
        mine = {name: q for name, q in codes.items() if name.startswith(layer_prefix)}
        for name, q in mine.items():
            if not isinstance(q, QuantizedLinear):
                raise TypeError(f"{name}: only integer codes are kept for --resume, not {type(q).__name__}")
            for part in _CODE_PARTS:
                tensors[f"codes/{name}/{part}"] = getattr(q, part).detach().cpu().contiguous()
            specs[name] = [q.spec.bits, q.spec.group_size, q.spec.symmetric]
        for name, param in layer.named_parameters():
            if (layer_prefix + name).removesuffix(".weight") not in mine:  # a linear's weight = its codes
                tensors[f"params/{name}"] = param.detach().cpu().contiguous()
        tmp = self._path(index).with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"specs": json.dumps(specs)})
        os.replace(tmp, self._path(index))
        self.finished = max(self.finished, index + 1)

    def restore(self, index: int, layer_prefix: str, layer: torch.nn.Module, codes: dict[str, QuantizedLinear]) -> None:
        """Put finished layer `index` back: its codes into `codes`, its parameters (linears
        as their dequantized codes, as the method left them) into `layer`."""
        from safetensors import safe_open

        path = self._path(index)
        with safe_open(str(path), framework="pt") as f:
            specs = json.loads(f.metadata()["specs"])
        tensors = load_file(str(path))
        params = dict(layer.named_parameters())
        with torch.no_grad():
            for name, (bits, group, symmetric) in specs.items():
                q = QuantizedLinear(*(tensors[f"codes/{name}/{p}"] for p in _CODE_PARTS), QuantSpec(bits, group, symmetric))
                codes[name] = q
                weight = params[name.removeprefix(layer_prefix) + ".weight"]
                weight.copy_(q.dequantize().to(weight.dtype))
            for key, value in tensors.items():
                if key.startswith("params/"):
                    params[key.removeprefix("params/")].copy_(value)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
