"""Engine logits equal transformers logits (fp32, max abs diff <= 1e-4) for tiny random models
of every supported architecture: prefill, then several decode steps. Unfused engines take a
left-padded batch; fused engines (GroupQueryAttention) a right-padded one, each row compared
with transformers on that row alone."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from optimizer.pipeline import BuildOptions, build_engine
from runtime.session import DecoderSession
from passes import UNFUSED_PIPELINE
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
    engine = build_engine(BuildOptions(out=tmp_path / "engine", source=str(folder), passes=UNFUSED_PIPELINE,
                                       quiet=True))
    windows = engine.manifest["kv_cache"]["sliding_windows"]
    # the sliding variants really have windowed layers (shorter than the test sequence)
    assert any(windows) == ("sliding" in name or name == "gemma3")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    ids, mask = _batch(model.config.vocab_size)
    session = DecoderSession(engine.model_path, engine.kv_cache)

    got = engine_logits(session, ids, mask, N_PREFILL)
    ref = hf_logits(model, ids, mask)
    real = mask.astype(bool)  # padded positions have no meaningful logits
    assert got.shape == ref.shape
    assert np.abs(got[real] - ref[real]).max() <= 1e-4
    # the decode steps alone, so that prefill agreement cannot hide a cache bug
    assert np.abs(got[:, N_PREFILL:] - ref[:, N_PREFILL:]).max() <= 1e-4


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_fused_engine_matches_transformers(name, tiny_hf_folders, tmp_path):
    """Right-padded rows of different lengths; each row's real positions against the model
    run on that row alone (prefill, then decode steps through the fused cache)."""
    folder = tiny_hf_folders[name]
    engine = build_engine(BuildOptions(out=tmp_path / "engine", source=str(folder), quiet=True))
    assert engine.manifest["kv_cache"]["padding"] == "right"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    session = DecoderSession(engine.model_path, engine.kv_cache)
    rng = np.random.default_rng(2)
    lengths = [N_PREFILL, N_PREFILL - 3]  # prompt lengths; row 1 is right-padded in the prefill
    ids = rng.integers(0, model.config.vocab_size, size=(2, N_PREFILL + N_DECODE)).astype(np.int64)
    mask = np.zeros((2, N_PREFILL), np.int64)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    pos = np.tile(np.arange(N_PREFILL), (2, 1))
    logits, cache = session.forward(ids[:, :N_PREFILL], mask, pos, session.empty_cache(2))
    got = [[logits[row, :n]] for row, n in enumerate(lengths)]
    seqs = [list(ids[row, :n]) for row, n in enumerate(lengths)]
    for t in range(N_DECODE):
        step = np.asarray([[ids[row, N_PREFILL + t]] for row in range(2)])
        total = [len(s) + 1 for s in seqs]
        step_mask = np.zeros((2, max(total)), np.int64)
        for row, n in enumerate(total):
            step_mask[row, :n] = 1
        logits, cache = session.forward(step, step_mask, np.asarray([[n - 1] for n in total]), cache)
        for row in range(2):
            got[row].append(logits[row])
            seqs[row].append(step[row, 0])
    for row in range(2):
        ref = hf_logits(model, np.asarray([seqs[row]]), np.ones((1, len(seqs[row])), np.int64))[0]
        assert np.abs(np.concatenate(got[row]) - ref).max() <= 1e-4, f"row {row}"


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_fp16_engine_tracks_fp32(name, tiny_hf_folders, tmp_path):
    folder = tiny_hf_folders[name]
    engine = build_engine(BuildOptions(out=tmp_path / "engine", source=str(folder), dtype="fp16",
                                       passes=UNFUSED_PIPELINE, quiet=True))
    assert engine.manifest["dtype"] == "fp16"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    ids, mask = _batch(model.config.vocab_size)
    session = DecoderSession(engine.model_path, engine.kv_cache)
    got = engine_logits(session, ids, mask, N_PREFILL)
    ref = hf_logits(model, ids, mask)
    real = mask.astype(bool)
    assert got.dtype == np.float32
    scale = np.abs(ref[real]).max()
    assert np.abs(got[real] - ref[real]).max() <= 0.02 * scale
    assert (got[real].argmax(-1) == ref[real].argmax(-1)).mean() >= 0.9
