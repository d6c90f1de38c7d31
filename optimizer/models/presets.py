"""Named architecture configs for synthetic (random-weight) models.

`optimize model --random-weights --config llama-3.2-1b` builds a model of that shape with
random weights: benchmarks at real shapes without downloading anything. The values are the
published configs of those models (shapes, RoPE settings); only the weights are made up.
The `tiny-*` presets are small models of each family for tests, with the SmolLM2 vocabulary
(49152) so the real SmolLM2 tokenizer fits them.
"""

from __future__ import annotations

from typing import Any

_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}


def _gemma3_rope(global_theta: float, local_theta: float = 10000.0) -> dict[str, Any]:
    return {"full_attention": {"rope_type": "default", "rope_theta": global_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": local_theta}}


PRESETS: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2),
    "llama-3.2-1b": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        rms_norm_eps=1e-5, rope_parameters=_LLAMA3_ROPE, tie_word_embeddings=True,
        max_position_embeddings=131072, bos_token_id=128000, eos_token_id=128001),
    "llama-3.2-3b": dict(
        model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
        num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256,
        rms_norm_eps=1e-5, rope_parameters=_LLAMA3_ROPE, tie_word_embeddings=True,
        max_position_embeddings=131072, bos_token_id=128000, eos_token_id=128001),
    "llama-3.1-8b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
        rms_norm_eps=1e-5, rope_parameters={**_LLAMA3_ROPE, "factor": 8.0},
        tie_word_embeddings=False, max_position_embeddings=131072,
        bos_token_id=128000, eos_token_id=128001),
    "mistral-7b": dict(
        model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=32768,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        sliding_window=None, tie_word_embeddings=False, max_position_embeddings=32768,
        bos_token_id=1, eos_token_id=2),
    "qwen2.5-0.5b": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True, max_position_embeddings=32768, use_sliding_window=False,
        bos_token_id=151643, eos_token_id=151645),
    "qwen2.5-1.5b": dict(
        model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True, max_position_embeddings=32768, use_sliding_window=False,
        bos_token_id=151643, eos_token_id=151645),
    "qwen2.5-7b": dict(
        model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=False, max_position_embeddings=32768, use_sliding_window=False,
        bos_token_id=151643, eos_token_id=151645),
    "gemma-3-270m": dict(
        model_type="gemma3_text", hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144,
        rms_norm_eps=1e-6, query_pre_attn_scalar=256, sliding_window=512,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)],
        rope_parameters=_gemma3_rope(1000000.0), hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True, max_position_embeddings=32768,
        bos_token_id=2, eos_token_id=1, pad_token_id=0),
    "gemma-3-1b": dict(
        model_type="gemma3_text", hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144,
        rms_norm_eps=1e-6, query_pre_attn_scalar=256, sliding_window=512,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(26)],
        rope_parameters=_gemma3_rope(1000000.0), hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True, max_position_embeddings=32768,
        bos_token_id=2, eos_token_id=1, pad_token_id=0),
    # Tiny models of each family for tests (SmolLM2 vocabulary).
    "tiny-llama": dict(
        model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=49152,
        rms_norm_eps=1e-5, rope_parameters=_LLAMA3_ROPE, tie_word_embeddings=True,
        max_position_embeddings=2048, bos_token_id=1, eos_token_id=2),
    "tiny-mistral": dict(
        model_type="mistral", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, vocab_size=49152,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        sliding_window=None, tie_word_embeddings=False, max_position_embeddings=2048,
        bos_token_id=1, eos_token_id=2),
    "tiny-qwen2": dict(
        model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=49152, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=False, max_position_embeddings=2048, use_sliding_window=False,
        bos_token_id=1, eos_token_id=2),
    "tiny-gemma3": dict(
        model_type="gemma3_text", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, vocab_size=49152,
        rms_norm_eps=1e-6, query_pre_attn_scalar=32, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters=_gemma3_rope(1000000.0), hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True, max_position_embeddings=2048,
        bos_token_id=1, eos_token_id=2, pad_token_id=2),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)
