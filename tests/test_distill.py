"""FP8 distillation (calibration/distill.py): the straight-through rounding, the schedule, and a
distilled tiny model: closer to the float model than calibration alone, still exactly the
E4M3 format, and an engine that computes it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from calibration import quant_config, quantize_model
from calibration.data import parse_spec, token_windows
from calibration.distill import WARMUP_STEPS, distillation_device, kl_to_teacher, lr_at
from calibration.fp8 import E4M3_MAX, fake_quant_fp8, quantize_fp8
from optimizer.core.errors import InputError
from optimizer.inspect import precision_notes
from optimizer.models.loader import load_model
from optimizer.pipeline import BuildOptions, build_engine

CALIB = "tiny:8x64"
DATA = "tiny:16x64"


def test_fake_quant_passes_the_gradient_straight_through():
    x = (torch.randn(200) * 3).requires_grad_(True)
    y = fake_quant_fp8(x, 0.01)
    assert torch.equal(y.detach(), fake_quant_fp8(x.detach(), 0.01))  # the same values as without a gradient
    (y * torch.arange(200.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(200.0))  # not rounded to E4M3 on the way back


def test_learning_rate_warms_up_then_decays_to_zero():
    steps, lr = 100, 1e-3
    assert lr_at(0, steps, lr) == pytest.approx(lr / WARMUP_STEPS)
    assert lr_at(WARMUP_STEPS - 1, steps, lr) == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 9 / 100)))
    rates = [lr_at(i, steps, lr) for i in range(WARMUP_STEPS, steps)]
    assert all(a >= b for a, b in zip(rates, rates[1:])) and rates[-1] < lr * 1e-3


def test_kl_is_zero_for_the_teacher_itself_and_positive_otherwise():
    t = torch.randn(2, 5, 11)
    assert float(kl_to_teacher(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_to_teacher(t + torch.randn(2, 5, 11), t)) > 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="gptq", bits=4, group_size=64), "fp8 only"),
    (dict(fp8_weights="gptq"), "rounds them to nearest"),
    (dict(smooth=0.5), "rounds them to nearest"),
    (dict(distill_lr=0.0), "positive learning rate"),
    (dict(distill_batch=0), "positive learning rate"),
    (dict(distill_device="tpu"), "unknown distillation device"),
    (dict(distill_data="nosuchcorpus:4x64"), "nosuchcorpus"),
])
def test_bad_distillation_settings_are_refused(kwargs, match):
    base = {"method": "fp8", "bits": 8, "group_size": None, "calib": CALIB, "distill_steps": 5}
    with pytest.raises(InputError, match=match):
        quant_config(**{**base, **kwargs}).validate()


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="no CUDA GPU"):
        distillation_device("cuda")


def _kl_on(model, teacher, windows: np.ndarray) -> float:
    ids = torch.from_numpy(windows)
    with torch.no_grad():
        return float(kl_to_teacher(model(input_ids=ids).logits, teacher(input_ids=ids).logits))


def test_distillation_brings_the_fp8_model_closer_to_float(tiny_hf_folders, tmp_path):
    """Calibration alone vs calibration + 30 distillation steps, on a tiny Llama: on the
    training text and on text it never saw, the distilled model's KL to the float model is
    lower; its weights are still per-channel E4M3 and the engine computes it."""
    folder = str(tiny_hf_folders["llama"])
    teacher = load_model(folder, quiet=True).model
    held_out = None
    kl = {}
    for steps in (0, 30):
        loaded = load_model(folder, quiet=True)
        cfg = quant_config(method="fp8", bits=8, group_size=None, calib=CALIB, distill_steps=steps,
                          distill_lr=3e-4, distill_batch=4, distill_data=DATA)
        if steps:
            assert "distilled 30 steps" in cfg.describe()
            engine_dir = build_engine(BuildOptions(out=tmp_path / "e", source=folder, quant=cfg, quiet=True),
                                      loaded=loaded)
            m = engine_dir.manifest
            d = m["quantization"]["distillation"]
            assert d["steps"] == 30 and d["device"] == "cpu" and d["data"]["windows"] == [16, 64]
            assert d["kl_last_steps"] < d["kl_first_steps"]
            assert m["quantization"]["distill_steps"] == 30
            assert any("fine-tuned against the float model" in n for n in precision_notes(m))
            v = m["verification"]
            assert v["max_abs_logit_diff"] < 1e-3 * max(1.0, v["max_abs_reference_logit"])
            assert v["top1_agreement"] == 1.0
        else:
            quantize_model(loaded, cfg, quiet=True)
            assert "distillation" not in cfg.to_manifest() and "distill_steps" not in cfg.to_manifest()
        if held_out is None:
            held_out = token_windows(loaded.tokenizer, parse_spec("wiki:4x64"), None)
            train = token_windows(loaded.tokenizer, parse_spec(DATA), None)
        kl[steps] = (_kl_on(loaded.model, teacher, train), _kl_on(loaded.model, teacher, held_out))
        for name, lin in loaded.model.named_modules():  # every FP8 linear: weight = E4M3 code x row scale
            if name.endswith("down_proj"):
                w = lin.weight.detach()
                scale = w.abs().amax(1, keepdim=True) / E4M3_MAX
                assert torch.equal(quantize_fp8(w, scale).float() * scale, w)
                assert not lin.weight.requires_grad  # frozen again, as the loader left it
    assert kl[30][0] < kl[0][0] and kl[30][1] < kl[0][1], kl


def test_distillation_from_the_command_line(tiny_hf_folders, tmp_path):
    from click.testing import CliRunner

    from optimizer.cli import main

    folder = str(tiny_hf_folders["qwen2"])
    common = ["model", folder, "--calib", CALIB, "--distill-steps", "2", "--distill-data", "tiny:8x64",
              "--distill-batch", "2", "--distill-lr", "1e-4", "-q"]
    ok = CliRunner().invoke(main, common + ["--quant", "fp8", "--out", str(tmp_path / "e")])
    assert ok.exit_code == 0, ok.output
    d = json.loads((tmp_path / "e" / "manifest.json").read_text())["quantization"]["distillation"]
    assert d["steps"] == 2 and d["batch"] == 2 and d["lr"] == 1e-4 and d["data"]["spec"] == "tiny:8x64"
    bad = CliRunner().invoke(main, common + ["--quant", "int4", "--out", str(tmp_path / "f")])
    assert bad.exit_code != 0 and "--distill-steps applies to --quant fp8 only" in bad.output
    assert not (tmp_path / "f").exists()
