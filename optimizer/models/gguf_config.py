"""A GGUF file's transformers config from its metadata: the values transformers' own GGUF
loader gives, without its slow parse.

transformers (5.24) rebuilds the config of a llama / qwen2 / gemma3 GGUF file with its legacy
loader (`load_gguf_checkpoint`), which parses every metadata field through the `gguf` package
and every vocabulary entry in Python: 2-3 s for SmolLM2's 49k tokens on 2 cores, 15 s for
Gemma-3's 262k, once for the config and once more for the tokenizer. Architectures listed in
its `GGUF_CONFIG_ARCHS` instead get their config from `read_gguf_metadata`, a struct walk that
leaves string arrays as their lengths (0.02 s). `config_dict` is that entry for the
architectures we load: the legacy loader's rules, restricted to them, over the same mapping
tables (`transformers.integrations.ggml`), so that the config is the same
(tests/test_gguf_loading.py compares the two on the packaged files and on small written ones).
"""

from __future__ import annotations

from typing import Any

# general.architecture values whose config `config_dict` builds (a Mistral file says llama)
ARCHITECTURES = ("llama", "qwen2", "gemma3")


def config_dict(metadata: dict[str, Any], tensor_names: tuple[str, ...]) -> dict[str, Any]:
    """The config dict transformers' legacy GGUF loader builds from this metadata (as
    `read_gguf_metadata` returns it: string arrays as their lengths) and these tensor names.

    Example: SmolLM2's file gives {"tie_word_embeddings": True, "model_type": "llama",
    "num_hidden_layers": 30, ..., "vocab_size": 49152, "head_dim": 64, "bos_token_id": 1, ...}.
    """
    from transformers.integrations.ggml import GGUF_CONFIG_DEFAULTS_MAPPING, GGUF_CONFIG_MAPPING

    architecture = metadata["general.architecture"]
    if architecture not in ARCHITECTURES:
        raise ValueError(f"config_dict builds configs of {', '.join(ARCHITECTURES)} GGUF files, not {architecture!r}")
    # llama.cpp writes Mistral models as llama; the legacy loader tells them by the name alone
    updated = "mistral" if architecture == "llama" and metadata.get("general.name") == "mistral" else architecture
    config: dict[str, Any] = {"tie_word_embeddings": "output.weight" not in tensor_names}
    for key, value in GGUF_CONFIG_DEFAULTS_MAPPING.get(updated, GGUF_CONFIG_DEFAULTS_MAPPING.get(architecture) or {}).items():
        config.setdefault(key, value)
    for key, value in metadata.items():  # in file order, as the legacy loader walks them
        prefix, _, rest = key.replace(architecture, updated).partition(".")
        renamed = GGUF_CONFIG_MAPPING.get(prefix, {}).get(rest)
        if renamed is None or renamed == -1:
            continue
        config[renamed] = _legacy_value(value, architecture, updated)
    if config.get("model_type") == "gemma3":  # the file holds the text model only
        config["model_type"] = "gemma3_text"
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in metadata:
        config["vocab_size"] = metadata["tokenizer.ggml.tokens"]  # the vocabulary's length
    return config


def _legacy_value(value: Any, architecture: str, updated: str) -> Any:
    """A metadata value as the legacy loader sets it: a one-element array as its element, the
    architecture's name in a string as the updated one's."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str) and architecture in value:
        value = value.replace(architecture, updated)
    return value
