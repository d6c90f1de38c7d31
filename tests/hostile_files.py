"""Makers of broken and hostile model files for tests/test_hostile_inputs.py: a tiny llama GGUF
(SmolLM2's tokenizer metadata, random tensors) and byte-level edits of GGUF and safetensors
files (truncation, lying headers, duplicate names)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY = dict(hidden=64, ffn=128, layers=1, heads=4, kv_heads=2, vocab=49152)


def tiny_llama_gguf(path: Path, tokenizer_gguf: Path, *, duplicate: str | None = None,
                    embedding_length: int | None = None) -> Path:
    """A one-layer llama GGUF (F32 / F16 tensors) with `tokenizer_gguf`'s tokenizer metadata.
    `duplicate` writes that tensor twice; `embedding_length` states another width than the tensors'."""
    import gguf

    t = TINY
    reader = gguf.GGUFReader(str(tokenizer_gguf))
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(2048)
    writer.add_embedding_length(embedding_length or t["hidden"])
    writer.add_feed_forward_length(t["ffn"])
    writer.add_block_count(t["layers"])
    writer.add_head_count(t["heads"])
    writer.add_head_count_kv(t["kv_heads"])
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    for field in reader.fields.values():
        if field.name.startswith("tokenizer.ggml."):
            value = field.contents()
            vtype = field.types[0]
            if vtype == gguf.GGUFValueType.ARRAY:
                writer.add_key_value(field.name, value, vtype, sub_type=field.types[-1])
            else:
                writer.add_key_value(field.name, value, vtype)
    rng = np.random.default_rng(0)
    hd = t["hidden"] // t["heads"]
    shapes = {"token_embd.weight": (t["vocab"], t["hidden"]), "output_norm.weight": (t["hidden"],)}
    for i in range(t["layers"]):
        shapes.update({f"blk.{i}.attn_norm.weight": (t["hidden"],), f"blk.{i}.ffn_norm.weight": (t["hidden"],),
                       f"blk.{i}.attn_q.weight": (t["heads"] * hd, t["hidden"]),
                       f"blk.{i}.attn_k.weight": (t["kv_heads"] * hd, t["hidden"]),
                       f"blk.{i}.attn_v.weight": (t["kv_heads"] * hd, t["hidden"]),
                       f"blk.{i}.attn_output.weight": (t["hidden"], t["heads"] * hd),
                       f"blk.{i}.ffn_gate.weight": (t["ffn"], t["hidden"]),
                       f"blk.{i}.ffn_up.weight": (t["ffn"], t["hidden"]),
                       f"blk.{i}.ffn_down.weight": (t["hidden"], t["ffn"])})
    for name, shape in shapes.items():
        dtype = np.float16 if name == "token_embd.weight" else np.float32
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(dtype))
    if duplicate:  # a second tensor whose name differs in its last letter, renamed below
        writer.add_tensor(duplicate[:-1] + "X", (rng.standard_normal(shapes[duplicate]) * 0.05).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if duplicate:
        data = path.read_bytes()
        path.write_bytes(data.replace((duplicate[:-1] + "X").encode(), duplicate.encode(), 1))
    return path
