"""--calib-device: calibration layer by layer on the GPU (one layer resident there at a time),
the CPU where there is none; where it ran is recorded with the calibration."""

from __future__ import annotations

import pytest
import torch

from calibration import calibration_device, quant_config, quantize_model, tensors_to_cpu
from calibration.fp8 import Fp8Linear
from calibration.rtn import QuantSpec, rtn_quantize
from calibration.sequential import to_device
from optimizer.core.errors import InputError
from optimizer.models.loader import load_model

CUDA = torch.cuda.is_available()
CALIB = "tiny:8x64"


def test_auto_is_the_gpu_where_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert calibration_device("auto") == "cpu" and calibration_device("cpu") == "cpu"
    with pytest.raises(InputError, match="no CUDA device"):
        quant_config("gptq", calib_device="cuda").validate()
    with pytest.raises(InputError, match="calibration device"):
        quant_config("gptq", calib_device="tpu").validate()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert calibration_device("auto") == "cuda"


def test_the_device_is_where_it_ran_not_what_it_computes():
    manifest = quant_config("awq", calib_device="cpu").to_manifest()
    assert "calib_device" not in manifest and manifest == quant_config("awq").to_manifest()


def test_nested_layer_arguments_move_together():
    kwargs = {"position_embeddings": (torch.ones(2), torch.zeros(2)), "attention_mask": None,
              "extra": [torch.ones(1)], "flag": True}
    moved = to_device(kwargs, "meta")
    assert moved["position_embeddings"][0].is_meta and moved["extra"][0].is_meta
    assert isinstance(moved["position_embeddings"], tuple)
    assert moved["attention_mask"] is None and moved["flag"] is True


def test_codes_records_keep_their_other_fields():
    q = rtn_quantize(torch.randn(4, 32), QuantSpec(4, 32, True))
    moved = tensors_to_cpu(q)
    assert type(moved) is type(q) and moved.spec == q.spec and torch.equal(moved.qweight, q.qweight)
    fp8 = Fp8Linear(torch.zeros(2, 2).to(torch.float8_e4m3fn), torch.ones(2), 0.5, "minmax")
    assert tensors_to_cpu(fp8).input_scale == 0.5 and tensors_to_cpu(fp8).observer == "minmax"


def test_cpu_calibration_records_its_device(tiny_hf_folders):
    loaded = load_model(tiny_hf_folders["llama"], quiet=True)
    result = quantize_model(loaded, quant_config("gptq", group_size=32, calib=CALIB, calib_device="cpu"), quiet=True)
    assert result.manifest["calibration"]["device"] == "cpu"


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (calibration on the device)")
@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_gpu_calibration_computes_what_the_cpu_computes(tiny_hf_folders, method):
    results = {}
    for device in ("cpu", "cuda"):
        loaded = load_model(tiny_hf_folders["qwen2"], quiet=True)
        cfg = quant_config(method, group_size=32, calib=CALIB, calib_device=device, act_order=method == "gptq")
        results[device] = (quantize_model(loaded, cfg, quiet=True), loaded.model)
    (cpu, cpu_model), (gpu, gpu_model) = results["cpu"], results["cuda"]
    assert gpu.manifest["calibration"]["device"] == "cuda"
    assert all(p.device.type == "cpu" for p in gpu_model.parameters())
    same = []
    for name, q in cpu.codes.items():
        got = gpu.codes[name]
        assert got.qweight.device.type == "cpu" and got.qweight.shape == q.qweight.shape
        same.append((got.qweight == q.qweight).float().mean().item())
    # GPTQ rounds column by column: float rounding on the GPU flips a few codes; AWQ picks a
    # scale per layer from a grid, and near ties (common in a random tiny model) may go the other
    # way, changing a whole linear's codes: the models must still compute the same
    assert min(same) > (0.97 if method == "gptq" else 0.5), same
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        a, b = cpu_model(input_ids=ids).logits, gpu_model(input_ids=ids).logits
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.99
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (GPTQ's sub-blocks captured as CUDA graphs)")
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_sub_block_graphs_give_the_eager_codes(monkeypatch, act_order):
    """calibration.gptq_sweep on CUDA: the sub-blocks replayed from captured graphs give the
    codes and parameters of the same sweep run eagerly on the device, bit for bit."""
    from calibration.gptq import gptq_quantize

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2048, 256, generator=g) @ (torch.randn(256, 256, generator=g) / 16)
    H = (2 * x.T @ x / len(x)).cuda()
    W = (torch.randn(96, 256, generator=g) * 0.05).cuda()
    spec = QuantSpec(4, 64, False)
    graphs = gptq_quantize(W, H, spec, act_order=act_order)
    monkeypatch.setenv("OPTIMIZER_GPTQ_CUDA_GRAPHS", "0")
    eager = gptq_quantize(W, H, spec, act_order=act_order)
    assert torch.equal(graphs.qweight, eager.qweight)
    assert torch.equal(graphs.scales, eager.scales) and torch.equal(graphs.zeros, eager.zeros)
