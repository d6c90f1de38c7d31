"""Engine logits equal transformers logits (fp32, max abs diff <= 1e-4) for tiny random models
of every supported architecture: a left-padded batch, prefill, then several decode steps."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from optimizer.pipeline import BuildOptions, build_engine
from runtime.session import DecoderSession, KvSpec
from tests.conftest import TINY_MODELS, engine_logits, hf_logits

N_PREFILL, N_DECODE = 7, 5


def _batch(vocab: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    ids = rng.integers(0, vocab, size=(2, N_PREFILL + N_DECODE)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # row 1 is left-padded by 3
    return ids, mask


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_fp32_engine_matches_transformers(name, tiny_hf_folders, tmp_path):
    folder = tiny_hf_folders[name]
    engine = build_engine(BuildOptions(out=tmp_path / "engine", source=str(folder), quiet=True))
    windows = engine.manifest["kv_cache"]["sliding_windows"]
    # the sliding variants really have windowed layers (shorter than the test sequence)
    assert any(windows) == ("sliding" in name or name == "gemma3")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    ids, mask = _batch(model.config.vocab_size)
    session = DecoderSession(engine.model_path, KvSpec.from_manifest(engine.manifest["kv_cache"]))

    got = engine_logits(session, ids, mask, N_PREFILL)
    ref = hf_logits(model, ids, mask)
    real = mask.astype(bool)  # padded positions have no meaningful logits
    assert got.shape == ref.shape
    assert np.abs(got[real] - ref[real]).max() <= 1e-4
    # the decode steps alone, so that prefill agreement cannot hide a cache bug
    assert np.abs(got[:, N_PREFILL:] - ref[:, N_PREFILL:]).max() <= 1e-4


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_fp16_engine_tracks_fp32(name, tiny_hf_folders, tmp_path):
    folder = tiny_hf_folders[name]
    engine = build_engine(BuildOptions(out=tmp_path / "engine", source=str(folder), dtype="fp16", quiet=True))
    assert engine.manifest["dtype"] == "fp16"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    ids, mask = _batch(model.config.vocab_size)
    session = DecoderSession(engine.model_path, KvSpec.from_manifest(engine.manifest["kv_cache"]))
    got = engine_logits(session, ids, mask, N_PREFILL)
    ref = hf_logits(model, ids, mask)
    real = mask.astype(bool)
    assert got.dtype == np.float32
    scale = np.abs(ref[real]).max()
    assert np.abs(got[real] - ref[real]).max() <= 0.02 * scale
    assert (got[real].argmax(-1) == ref[real].argmax(-1)).mean() >= 0.9
