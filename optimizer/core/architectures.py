"""Architecture knowledge, as data, in one place.

Each supported decoder family is one `ArchSpec`: which HuggingFace `model_type` values it
covers, where its weights live in the state dict, which norm sits where, and the handful of
behaviours that differ between families (Gemma's `1 + w` norms, embedding scale, QK-norm,
sandwich norms, sliding-window layers, BOS). Capture, calibration and evaluation read these
fields; nothing else in the project branches on the model class.

Biases are not listed: capture adds a bias wherever the state dict has one (Qwen2's q/k/v).
"""

from __future__ import annotations

from dataclasses import dataclass

from optimizer.core.errors import UnsupportedModelError


@dataclass(frozen=True)
class NormPlacement:
    """Which norm (state-dict name inside a layer) sits where in a decoder layer.

    `attn_in` feeds q/k/v, `mlp_in` feeds gate/up. `attn_out` / `mlp_out` are the extra
    "sandwich" norms applied to a block's output before the residual add (Gemma 2/3).
    """

    attn_in: str
    mlp_in: str
    attn_out: str | None = None
    mlp_out: str | None = None


@dataclass(frozen=True)
class ArchSpec:
    name: str
    model_types: tuple[str, ...]
    description: str
    norms: NormPlacement
    activation_attr: str = "hidden_act"  # config attribute naming the MLP activation
    norm_weight_offset: float = 0.0  # Gemma RMSNorm scales by (1 + w)
    embed_scale: bool = False  # Gemma multiplies embeddings by sqrt(hidden_size)
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE
    attention_scale_attr: str | None = None  # config attr s: scale = s ** -0.5 (else head_dim)
    window_source: str = "layer_types"  # "layer_types" | "all_layers": where sliding windows apply
    needs_bos: bool = False  # perplexity windows start with BOS (Gemma: ppl 12.7 vs 32 without)
    # State-dict names. `{i}` is the layer index.
    layer_prefix: str = "model.layers.{i}."
    embed: str = "model.embed_tokens.weight"
    final_norm: str = "model.norm.weight"
    lm_head: str = "lm_head.weight"
    attn_proj: tuple[str, str, str, str] = (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
    )
    qk_norm_names: tuple[str, str] = ("self_attn.q_norm", "self_attn.k_norm")
    mlp_proj: tuple[str, str, str] = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


_LLAMA_NORMS = NormPlacement(attn_in="input_layernorm", mlp_in="post_attention_layernorm")

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(
        name="llama",
        model_types=("llama",),
        description="Llama family: SmolLM2, Llama 3.x (RMSNorm, RoPE incl. llama3 scaling, SwiGLU, GQA)",
        norms=_LLAMA_NORMS,
    ),
    "mistral": ArchSpec(
        name="mistral",
        model_types=("mistral",),
        description="Mistral (Llama layout; a sliding window, when set, applies to every layer)",
        norms=_LLAMA_NORMS,
        window_source="all_layers",
    ),
    "qwen2": ArchSpec(
        name="qwen2",
        model_types=("qwen2",),
        description="Qwen2 / Qwen2.5 (q/k/v bias, tied or untied embeddings)",
        norms=_LLAMA_NORMS,
    ),
    "gemma3": ArchSpec(
        name="gemma3",
        model_types=("gemma3_text",),
        description="Gemma 3 text (sliding/global layers, QK-norm, GeGLU, sandwich norms, BOS)",
        norms=NormPlacement(
            attn_in="input_layernorm",
            attn_out="post_attention_layernorm",
            mlp_in="pre_feedforward_layernorm",
            mlp_out="post_feedforward_layernorm",
        ),
        activation_attr="hidden_activation",
        norm_weight_offset=1.0,
        embed_scale=True,
        qk_norm=True,
        attention_scale_attr="query_pre_attn_scalar",
        needs_bos=True,
    ),
}


def supported_model_types() -> list[str]:
    return sorted(t for spec in ARCHITECTURES.values() for t in spec.model_types)


def arch_for_model_type(model_type: str | None) -> ArchSpec:
    """The spec covering a HuggingFace `model_type`, or an error listing the supported ones."""
    for spec in ARCHITECTURES.values():
        if model_type in spec.model_types:
            return spec
    raise UnsupportedModelError(
        f"unsupported architecture: model_type {model_type!r}",
        hint="supported model types: " + ", ".join(supported_model_types()),
    )


def output_tied(config) -> bool:
    """The output projection reads the embedding table (transformers ties them when the config
    says so, whatever the checkpoint holds for lm_head)."""
    return bool(getattr(config, "tie_word_embeddings", False))
