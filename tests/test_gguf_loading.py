"""Our GGUF loading (optimizer.models.gguf_tensors / gguf_weights / gguf_fast) against
transformers' own GGUF loader: the same weights, bit for bit, on the packaged SmolLM2 (llama:
q/k rows un-permuted) and Gemma-3 (norms stored as 1 + w) files; the same config and
tokenizer. And files that are not what they claim get a clear error."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from optimizer.core.assets import fetch_asset
from optimizer.core.errors import InputError
from optimizer.models.gguf_tensors import read_tensors
from optimizer.models.gguf_weights import unpermute_rows
from optimizer.models.loader import load_model


def ours_and_transformers(path: Path):
    ours = load_model(path, quiet=True)
    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return ours, reference


@pytest.mark.real
@pytest.mark.parametrize("asset", ["smollm2-135m", "gemma-3-270m"])
def test_weights_config_and_tokenizer_equal_transformers(asset):
    path = fetch_asset(asset, quiet=True)
    ours, theirs = ours_and_transformers(path)
    ours_sd, theirs_sd = ours.model.state_dict(), theirs.state_dict()
    assert ours_sd.keys() == theirs_sd.keys()
    for name, value in theirs_sd.items():
        assert ours_sd[name].dtype == value.dtype and torch.equal(ours_sd[name], value), name
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
                "rope_theta", "tie_word_embeddings"):
        assert getattr(ours.config, key, None) == getattr(theirs.config, key, None), key
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text = "The capital of France is Paris. def f(x):\n    return x ** 2  # naïve"
    assert ours.tokenizer(text)["input_ids"] == tok(text)["input_ids"]


def test_unpermute_rows_inverts_llama_cpp_permutation():
    heads, head_dim, cols = 3, 8, 5
    w = np.arange(heads * head_dim * cols, dtype=np.float32).reshape(heads * head_dim, cols)
    # llama.cpp's convert: reshape(heads, 2, half, ...).swapaxes(1, 2)
    permuted = w.reshape(heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(w.shape)
    assert np.array_equal(unpermute_rows(permuted, heads), w)


def _tiny_gguf(path: Path) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("llama.block_count", 1)
    writer.add_tensor("token_embd.weight", np.arange(32, dtype=np.float32).reshape(4, 8))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_tensors_are_read_as_written(tmp_path):
    path = tmp_path / "tiny.gguf"
    _tiny_gguf(path)
    tensors = {t.name: t for t in read_tensors(path)}
    assert np.array_equal(tensors["token_embd.weight"].data, np.arange(32, dtype=np.float32).reshape(4, 8))
    assert tensors["output_norm.weight"].data.dtype == np.float16 and tensors["output_norm.weight"].shape == (8,)


def test_truncated_and_lying_files_are_clear_errors(tmp_path):
    path = tmp_path / "tiny.gguf"
    _tiny_gguf(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-40])  # the last tensor's data is cut short
    with pytest.raises(InputError, match="runs past the end"):
        read_tensors(cut)
    head = tmp_path / "head.gguf"
    head.write_bytes(data[:60])  # the metadata itself is cut
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_tensors(head)
    lying = tmp_path / "lying.gguf"  # claims 2^40 tensors: refused before reading any
    lying.write_bytes(data[:8] + struct.pack("<Q", 1 << 40) + data[16:])
    with pytest.raises(InputError, match="cannot fit"):
        read_tensors(lying)
    magic = tmp_path / "magic.gguf"
    magic.write_bytes(b"GGUX" + data[4:])
    with pytest.raises(InputError, match="not a GGUF file"):
        read_tensors(magic)
