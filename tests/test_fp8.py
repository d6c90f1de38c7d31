"""FP8 (E4M3) W8A8: the number format, the observers, the per-layer step, and whole engines
whose Q/DQ graph computes the torch model with fake-quantized weights and activations."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from calibration import quant_config
from calibration.fp8 import (E4M3_MAX, MinMaxObserver, MseObserver, PercentileObserver, fake_quant_fp8,
                             mse_optimal_scale, quantize_linear_fp8, weight_scales)
from optimizer.core.errors import InputError
from optimizer.models.loader import load_model
from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine
from runtime.sampling import SamplingParams

CALIB = "tiny:8x64"


def test_fake_quant_matches_the_e4m3_format():
    x = torch.randn(1000) * 3
    scale = 0.01
    got = fake_quant_fp8(x, scale).numpy()
    ref = np.clip(x.numpy() / scale, -E4M3_MAX, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale
    assert np.array_equal(got, ref)
    assert np.abs(got).max() <= E4M3_MAX * scale  # saturates, never inf / nan


def test_weight_scales_map_each_rows_max_to_448():
    w = torch.randn(16, 64)
    q = quantize_linear_fp8(w, 1.0, "minmax")
    assert torch.allclose(weight_scales(w) * E4M3_MAX, w.abs().amax(1))
    assert torch.allclose(q.weight.float().abs().amax(1), torch.full((16,), E4M3_MAX))
    rel = ((q.dequantize() - w).abs() / w.abs().clamp(min=1e-3)).max()
    assert rel <= 2 ** -4 + 1e-6  # 3 mantissa bits: round-to-nearest within half an ulp


def test_observers_order_on_heavy_tailed_data():
    torch.manual_seed(0)
    x = torch.randn(64, 4096)
    x[0, 0] = 200.0  # one outlier
    scales = {}
    for name, obs in (("minmax", MinMaxObserver()), ("percentile", PercentileObserver(99.9)), ("mse", MseObserver())):
        for chunk in x.split(16):
            obs.update(chunk)
        scales[name] = obs.scale()
    assert scales["minmax"] == pytest.approx(200.0 / E4M3_MAX)
    assert scales["percentile"] < scales["minmax"] and scales["mse"] <= scales["minmax"]
    sample = x.reshape(-1)
    err = {k: float((fake_quant_fp8(sample, s) - sample).pow(2).mean()) for k, s in scales.items()}
    assert err["mse"] <= min(err.values())  # E4M3's wide range: clipping the outlier rarely pays


def test_mse_scale_is_the_best_of_its_grid():
    sample = torch.randn(10000)
    amax = float(sample.abs().max())
    best = mse_optimal_scale(sample, amax, grid=10)
    errors = [float((fake_quant_fp8(sample, amax * i / 10 / E4M3_MAX) - sample).pow(2).mean()) for i in range(1, 11)]
    chosen = float((fake_quant_fp8(sample, best) - sample).pow(2).mean())
    assert chosen == pytest.approx(min(errors))


@pytest.mark.parametrize("kwargs,match", [
    (dict(observer="histogram"), "unknown FP8 observer"),
    (dict(symmetric=False), "per-channel and symmetric"),
    (dict(lm_head_bits=8), "lm-head-bits"),
    (dict(calib=None), "needs calibration data"),
    (dict(percentile=20.0), "percentile"),
])
def test_bad_fp8_settings_are_refused(kwargs, match):
    with pytest.raises(InputError, match=match):  # when made (fixed format) or validated
        quant_config(**{"method": "fp8", "bits": 8, "group_size": None, "calib": CALIB, **kwargs}).validate()


@pytest.mark.parametrize("name,observer", [("llama", "minmax"), ("qwen2", "mse"), ("gemma3", "percentile")])
def test_fp8_engine_computes_the_fake_quant_model(name, observer, tiny_hf_folders, tmp_path):
    loaded = load_model(str(tiny_hf_folders[name]), quiet=True)
    cfg = quant_config(method="fp8", bits=8, group_size=None, observer=observer, calib=CALIB)
    engine_dir = build_engine(BuildOptions(out=tmp_path / "e", source=str(tiny_hf_folders[name]),
                                           quant=cfg, quiet=True), loaded=loaded)
    m = engine_dir.manifest
    assert m["quantization"]["method"] == "fp8" and m["quantization"]["observer"] == observer
    assert m["quantization"]["format"].startswith("QDQ")
    layers = loaded.config.num_hidden_layers
    delta = next(p for p in m["passes"] if p["name"] == "lower-quantized-matmul")["op_delta"]
    # one activation Q/DQ per input tensor (q/k/v share one, gate/up share one), one DQ per weight
    assert delta["QuantizeLinear"] == 4 * layers
    assert delta["DequantizeLinear"] == 4 * layers + 7 * layers
    assert "com.microsoft::MatMulNBits" not in delta
    # the engine (fused attention, static cache) computes the torch model with the same fake quant
    assert m["verification"]["max_abs_logit_diff"] < 1e-3 * max(1.0, m["verification"]["max_abs_reference_logit"])
    assert m["verification"]["top1_agreement"] == 1.0
    engine = Engine.load(engine_dir.path)
    result = engine.generate("The capital of France is", SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert len(result.token_ids) == 4


def test_cuda_target_needs_the_cuda_provider_and_fp16(tmp_path, monkeypatch):
    """--target onnxruntime-cuda is verified on CUDA: refused where onnxruntime has no CUDA
    provider, and FP8's CUDA kernel takes fp16 activations; nothing is written either way."""
    import onnxruntime as ort

    cfg = quant_config(method="fp8", bits=8, group_size=None, calib=CALIB)
    opts = BuildOptions(out=tmp_path / "e", random_weights=True, config="tiny-llama", quant=cfg,
                        target="onnxruntime-cuda", dtype="fp16")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(InputError, match="CUDA provider"):
        opts.validate()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    opts.validate()
    with pytest.raises(InputError, match="float16"):
        BuildOptions(out=tmp_path / "e", random_weights=True, config="tiny-llama", quant=cfg,
                     target="onnxruntime-cuda", dtype="fp32").validate()
    assert not (tmp_path / "e").exists()


def test_cuda_only_engine_is_refused_on_cpu(tmp_path):
    from optimizer.core.errors import EngineError
    from optimizer.core.engine_format import KvCacheSpec
    from runtime.session import DecoderSession

    kv = KvCacheSpec(1, 1, 8, "fp16", "past.{i}.key", "past.{i}.value", "present.{i}.key", "present.{i}.value")
    quantization = {"method": "fp8", "format": "MatMulBlockQuantizedFp8Weight (...)", "provider": "cuda"}
    with pytest.raises(EngineError, match="cuda-only") as err:
        DecoderSession(tmp_path / "model.onnx", kv, provider="cpu", quantization=quantization)
    assert "--provider cuda" in err.value.hint


def test_smoothing_scales_balance_activations_and_weights():
    from calibration.fp8 import smoothing_scales

    x = torch.tensor([100.0, 1.0, 0.0, 4.0])
    w = torch.tensor([1.0, 1.0, 2.0, 0.0])
    s = smoothing_scales(x, w, alpha=0.5)
    assert torch.allclose(s[:2], torch.tensor([10.0, 1.0]))  # sqrt(max x / max w)
    assert s[2] == 1.0 and s[3] == 1.0  # dead channels are left alone
    # after migration the activation and weight maxima of a channel are equal at alpha 0.5
    assert torch.allclose(x[:2] / s[:2], w[:2] * s[:2])


@pytest.mark.parametrize("name", ["llama", "gemma3"])  # gemma3: norms with a (1 + w) offset
def test_smoothing_leaves_the_float_model_unchanged(name, tiny_hf_folders):
    """Migration is exact in float: the model computes the same logits, with different weights."""
    from calibration.mappings import module_names
    from calibration.methods import smooth_layer
    from calibration.sequential import run_sequential

    loaded = load_model(str(tiny_hf_folders[name]), quiet=True)
    ids = torch.randint(0, loaded.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = loaded.model(input_ids=ids).logits
    down = module_names(loaded.arch, 0)["down"]
    w_before = loaded.model.get_submodule(down).weight.detach().clone()
    windows = np.random.default_rng(0).integers(0, loaded.config.vocab_size, (4, 32))
    run_sequential(loaded.model, loaded.arch, windows, 4, lambda work: smooth_layer(work, 0.5, loaded.arch),
                   keep=lambda n: False, quiet=True)
    with torch.no_grad():
        after = loaded.model(input_ids=ids).logits
    assert not torch.equal(loaded.model.get_submodule(down).weight, w_before)
    assert torch.allclose(after, before, atol=1e-4 * max(1.0, before.abs().max().item()))


def test_smooth_is_fp8_only():
    with pytest.raises(InputError, match="--smooth"):
        quant_config(method="rtn", smooth=0.5).validate()
    with pytest.raises(InputError, match="smoothing strength"):
        quant_config(method="fp8", bits=8, group_size=None, smooth=1.5, calib=CALIB).validate()


def test_gptq_fp8_rounds_to_e4m3_with_less_output_error():
    """GPTQ on the E4M3 grid keeps round-to-nearest's per-row scales and E4M3 codes, and
    on correlated inputs gives a smaller output error than rounding each weight to nearest."""
    from calibration.gptq import HessianAccumulator, gptq_fp8

    g = torch.Generator().manual_seed(0)
    W = torch.randn(32, 96, generator=g) * 0.05
    X = torch.randn(512, 8, generator=g) @ torch.randn(8, 96, generator=g) + 0.1 * torch.randn(512, 96, generator=g)
    acc = HessianAccumulator(96)
    acc.add(X)
    codes, scales = gptq_fp8(W, acc.H)
    assert codes.dtype == torch.float8_e4m3fn and torch.equal(scales, weight_scales(W))
    nearest = quantize_linear_fp8(W, 1.0, "minmax").dequantize()
    gptq = codes.float() * scales.unsqueeze(1)
    err = lambda Wq: float(((X @ (W - Wq).T) ** 2).mean())  # noqa: E731
    assert err(gptq) < 0.7 * err(nearest)


def test_fp8_gptq_from_the_cli_options():
    from optimizer.recipes import QuantSection, quant_config_from

    cfg = quant_config_from(QuantSection(quant="fp8", method="gptq", calib=CALIB))
    assert cfg.method == "fp8" and cfg.fp8_weights == "gptq" and "GPTQ" in cfg.describe()
    with pytest.raises(InputError, match="not awq"):
        quant_config_from(QuantSection(quant="fp8", method="awq", calib=CALIB))


def test_asymmetric_target_is_the_least_squares_fit_to_the_float_outputs():
    """W* = W C H^-1 fits the quantized model's inputs Xq to the float outputs W X: its
    residual is orthogonal to Xq, and the error against W X splits exactly into the fit's
    residual plus (W* - Q)'s error on Xq, so GPTQ of W* against H minimizes the right thing."""
    from calibration.gptq import PairAccumulator, asymmetric_target

    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 48, generator=g)
    X = torch.randn(400, 48, generator=g) @ torch.randn(48, 48, generator=g)  # float inputs
    drift = torch.eye(48) + 0.2 * torch.randn(48, 48, generator=g)  # earlier layers' systematic error
    Xq = X @ drift + 0.05 * torch.randn(400, 48, generator=g)  # what the quantized model feeds
    acc = PairAccumulator(48)
    for rows in (slice(0, 150), slice(150, 400)):  # the running averages add up over batches
        acc.add_pair(X[rows], Xq[rows])
    assert torch.allclose(acc.H, 2 * Xq.T @ Xq / 400, rtol=1e-4, atol=1e-3)
    assert torch.allclose(acc.C, 2 * X.T @ Xq / 400, rtol=1e-4, atol=1e-3)
    target = asymmetric_target(W, acc.H, acc.C, damp=0.0)
    residual = X @ W.T - Xq @ target.T
    assert float((residual.T @ Xq).abs().max()) < 1e-2 * float((X @ W.T).abs().max()) * 400
    err = lambda A: float((A ** 2).sum())  # noqa: E731
    assert err(residual) < 0.1 * err(X @ W.T - Xq @ W.T)  # the drift is compensated, W alone is not
    Q = target + 0.01 * torch.randn(16, 48, generator=g)
    assert err(X @ W.T - Xq @ Q.T) == pytest.approx(err(residual) + err(Xq @ (target - Q).T), rel=1e-3)
    # damped: the ridge pulls towards W, so inputs the quantized model reproduces exactly keep W
    same = PairAccumulator(48)
    same.add_pair(X, X)
    assert torch.allclose(asymmetric_target(W, same.H, same.C, damp=0.01), W, atol=1e-4)
    with pytest.raises(ValueError, match="must match"):
        acc.add_pair(X[:10], Xq[:9])


def test_fp8_gptaq_engine_computes_its_fake_quant_model_and_tracks_float_closer(tiny_hf_folders, tmp_path):
    """GPTAQ (weights fitted to the float model's outputs, group by group) on a tiny Llama:
    the engine computes its fake-quant torch model, and on the calibration text the fitted
    model's logits are closer to the float model's than plain FP8 GPTQ's."""
    folder = str(tiny_hf_folders["llama"])
    windows = None
    logits = {}
    for rounding in ("float", "gptq", "gptaq"):
        loaded = load_model(folder, quiet=True)
        if rounding != "float":
            cfg = quant_config(method="fp8", bits=8, group_size=None, fp8_weights=rounding, calib=CALIB)
            assert ("GPTAQ" in cfg.describe()) == (rounding == "gptaq") and cfg.float_stream == (rounding == "gptaq")
            engine_dir = build_engine(BuildOptions(out=tmp_path / rounding, source=folder, quant=cfg, quiet=True),
                                      loaded=loaded)
            q = engine_dir.manifest["quantization"]
            assert q["fp8_weights"] == rounding and q["quantized_modules"] == 7 * loaded.config.num_hidden_layers
            v = engine_dir.manifest["verification"]
            assert v["max_abs_logit_diff"] < 1e-3 * max(1.0, v["max_abs_reference_logit"]) and v["top1_agreement"] == 1.0
        if windows is None:
            from calibration import calibration_windows
            windows = torch.from_numpy(calibration_windows(loaded, quant_config(method="fp8", bits=8, group_size=None,
                                                                               calib=CALIB)))
        with torch.no_grad():
            logits[rounding] = loaded.model(input_ids=windows).logits.float()
    err = {r: float((logits[r] - logits["float"]).pow(2).mean()) for r in ("gptq", "gptaq")}
    assert 0 < err["gptaq"] < err["gptq"], err
