"""Our GGUF loading (optimizer.models.gguf_tensors / gguf_weights / gguf_fast / gguf_config)
against transformers' own GGUF loader: the same weights, bit for bit, on the packaged SmolLM2
(llama: q/k rows un-permuted) and Gemma-3 (norms stored as 1 + w) files; the same config and
tokenizer; our dequantization against gguf's own, tensor by tensor; our config builder against
transformers' legacy one on small written files of each architecture. And files that are not
what they claim get a clear error."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from optimizer.core.assets import fetch_asset
from optimizer.core.errors import InputError
from optimizer.models.gguf_config import config_dict
from optimizer.models.gguf_tensors import read_tensors
from optimizer.models.gguf_weights import dequantized, small_pages, unpermute_rows
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
    ours_config, theirs_config = ours.config.to_dict(), theirs.config.to_dict()
    assert ours_config.pop("dtype") == "float32"  # set by our fp32 construction, not by the file
    theirs_config.pop("dtype")
    theirs_config.pop("quantization_config")  # transformers' note that it dequantized; ours drops it
    assert ours_config == theirs_config
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert ours.tokenizer.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert ours.tokenizer.init_kwargs == tok.init_kwargs
    text = "The capital of France is Paris. def f(x):\n    return x ** 2  # naïve"
    assert ours.tokenizer(text)["input_ids"] == tok(text)["input_ids"]


@pytest.mark.real
@pytest.mark.parametrize("asset", ["smollm2-135m", "gemma-3-270m"])
def test_dequantized_equals_gguf_bit_for_bit(asset):
    """Every tensor of the packaged files (F32, Q4_1, Q8_0; Q4_K, Q6_K, Q5_0, ...): our runs of
    rows through gguf's row function against gguf.dequantize itself."""
    from gguf import GGMLQuantizationType, dequantize

    types = set()
    for tensor in read_tensors(fetch_asset(asset, quiet=True)):
        ours, theirs = dequantized(tensor), np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        assert ours.dtype == np.float32 and ours.flags.writeable and ours.shape == theirs.shape, tensor.name
        assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)), tensor.name
        types.add(GGMLQuantizationType(tensor.tensor_type).name)
    assert len(types) >= 3, types  # block formats were exercised, not only plain floats


def test_small_pages_turns_numpy_hugepage_advice_off_for_its_duration_only():
    try:
        from numpy._core.multiarray import _set_madvise_hugepage as advise
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _set_madvise_hugepage as advise
    before = advise(True)  # each call returns the setting it replaces
    try:
        with small_pages():
            assert advise(False) is False
        assert advise(True) is True
    finally:
        advise(before)


def test_unpermute_rows_inverts_llama_cpp_permutation():
    heads, head_dim, cols = 3, 8, 5
    w = np.arange(heads * head_dim * cols, dtype=np.float32).reshape(heads * head_dim, cols)
    # llama.cpp's convert: reshape(heads, 2, half, ...).swapaxes(1, 2)
    permuted = w.reshape(heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(w.shape)
    assert np.array_equal(unpermute_rows(permuted, heads), w)


# architecture -> metadata our config builder reads (llama.cpp's keys for each)
_ARCH_KEYS = {
    "llama": {"rope.dimension_count": 4},
    "qwen2": {"rope.dimension_count": 4},
    "gemma3": {"attention.key_length": 4, "attention.value_length": 4, "attention.sliding_window": 3},
}


def _config_gguf(path: Path, arch: str, name: str, tied: bool) -> None:
    """A small GGUF file of `arch` whose metadata says what a config needs (no real weights)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    for key, value in {"block_count": 2, "context_length": 64, "embedding_length": 8, "feed_forward_length": 16,
                       "attention.head_count": 2, "attention.head_count_kv": 1}.items():
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_float32(f"{arch}.rope.freq_base", 10000.0)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    for key, value in _ARCH_KEYS[arch].items():
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(12)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_tensor("token_embd.weight", np.zeros((12, 8), dtype=np.float32))
    if not tied:
        writer.add_tensor("output.weight", np.zeros((12, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("arch,name,tied", [("llama", "SmolLM2 135M", True), ("llama", "mistral", False),
                                            ("qwen2", "Qwen2.5 0.5B", True), ("gemma3", "Gemma 3 270m", True)])
def test_config_dict_equals_transformers_legacy_loader(tmp_path, arch, name, tied):
    """The config the fast path builds is the legacy loader's, key for key and in its order (a
    Mistral file says llama and is told by its name; a file with output.weight is untied)."""
    from transformers.integrations.gguf import read_gguf_metadata
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = tmp_path / f"{arch}.gguf"
    _config_gguf(path, arch, name, tied)
    legacy = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    ours = config_dict(*read_gguf_metadata(str(path)))
    assert list(ours.items()) == list(legacy.items())
    assert ours["tie_word_embeddings"] is tied and ours["vocab_size"] == 12


def test_fast_gguf_restores_transformers(tmp_path):
    """The config entries and the plain-view reader are in place for one load only."""
    from transformers.integrations.gguf import reader
    from transformers.integrations.gguf.gguf_config_mapping import GGUF_CONFIG_ARCHS

    from optimizer.models.gguf_fast import fast_gguf

    archs, mapped = dict(GGUF_CONFIG_ARCHS), reader._mapped
    path = tmp_path / "llama.gguf"
    _config_gguf(path, "llama", "tiny", True)
    with fast_gguf():
        assert GGUF_CONFIG_ARCHS["llama"] is config_dict
        assert type(reader._mapped(str(path))) is np.ndarray  # not np.memmap
    assert GGUF_CONFIG_ARCHS == archs and reader._mapped is mapped


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
    vocab = tmp_path / "vocab.gguf"  # cut inside a string array (a vocabulary)
    _vocab_gguf(vocab)
    vocab_bytes = vocab.read_bytes()
    cut_vocab = tmp_path / "cut_vocab.gguf"
    cut_vocab.write_bytes(vocab_bytes[:vocab_bytes.index(b"token-500") + 3])
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_tensors(cut_vocab)
    assert [t.name for t in read_tensors(vocab)] == ["token_embd.weight"]
    magic = tmp_path / "magic.gguf"
    magic.write_bytes(b"GGUX" + data[4:])
    with pytest.raises(InputError, match="not a GGUF file"):
        read_tensors(magic)


def _vocab_gguf(path: Path) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list([f"token-{i}" for i in range(1000)])
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
