"""--resume: a calibrated build killed after some layers continues from them, calibrating only
the rest, and writes the engine an uninterrupted build writes; its kept layers are no engine."""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

import pytest

from calibration import quantize as calibration  # the module behind the package's names
from calibration import quant_config
from calibration.layer_store import LayerStore, progress_dir
from optimizer.core.artifact import load_engine
from optimizer.core.errors import InputError, OptimizerError
from optimizer.pipeline import BuildOptions, build_engine

CALIB = "tiny:8x64"


def digest(path: Path) -> str:
    return hashlib.sha256((path / "model.onnx").read_bytes()).hexdigest()


class Killed(Exception):
    pass


def options(folder: Path, out: Path, method: str, **kw) -> BuildOptions:
    return BuildOptions(out=out, source=str(folder), quiet=True, **kw,
                        quant=quant_config(method=method, bits=4, group_size=32, symmetric=False, calib=CALIB))


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_a_killed_build_resumes_from_its_finished_layers(tiny_hf_folders, tmp_path, monkeypatch, method):
    folder = tiny_hf_folders["qwen2"]  # biases: AWQ folds its scales into them, kept with the layer
    whole = build_engine(options(folder, tmp_path / "whole", method))
    assert not progress_dir(tmp_path / "whole").exists()  # removed once the engine is written

    out = tmp_path / "resumed"
    save = LayerStore.save

    def killed_after_first_layer(self, index, *args):
        save(self, index, *args)
        if index == 0:
            raise Killed

    monkeypatch.setattr(LayerStore, "save", killed_after_first_layer)
    with pytest.raises(Killed):
        build_engine(options(folder, out, method))
    kept = progress_dir(out)
    assert not out.exists() and sorted(p.name for p in kept.iterdir()) == ["layer-0000.safetensors", "progress.json"]
    with pytest.raises(OptimizerError):
        load_engine(kept)  # never taken for an engine
    monkeypatch.undo()

    calibrated = []
    kind = type(options(folder, out, method).quant)
    step = calibration.ALGORITHMS[kind].keywords["step"]
    monkeypatch.setitem(calibration.ALGORITHMS, kind, partial(
        calibration.quantize_calibrated, step=lambda work, **kw: (calibrated.append(work.index), step(work, **kw))))
    build_engine(options(folder, out, method, resume=True))
    assert calibrated == [1]  # tiny-qwen2 has two layers: the first was kept
    assert digest(out) == digest(whole.path)
    assert not kept.exists()


def test_progress_made_with_other_settings_is_refused(tiny_hf_folders, tmp_path, monkeypatch):
    folder, out = tiny_hf_folders["llama"], tmp_path / "e"
    monkeypatch.setattr(LayerStore, "save", lambda *a: (_ for _ in ()).throw(Killed))
    with pytest.raises(Killed):
        build_engine(options(folder, out, "gptq"))
    monkeypatch.undo()
    with pytest.raises(InputError, match="other settings.*quantization"):
        build_engine(options(folder, out, "awq", resume=True))
    with pytest.raises(InputError, match="--resume"):
        build_engine(BuildOptions(out=out, source=str(folder), quiet=True, resume=True,
                                  quant=quant_config(method="rtn", bits=4, group_size=32)))
    assert progress_dir(out).exists()  # still there for a resume with the right settings
    build_engine(options(folder, out, "awq"))  # without --resume: starts over
    assert not progress_dir(out).exists()
