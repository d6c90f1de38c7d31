"""A random-weight safetensors checkpoint of a preset (or config.json) shape, written shard by
shard, for building and calibrating at real sizes without a model hub:

    optimize random-checkpoint llama-3.1-8b --out ckpt-8b/ [--dtype bf16] [--shard-size 2GB] [--seed 0]

The parameter names and shapes come from the model class on PyTorch's meta device (no memory);
the shards are planned from those sizes, then each is filled (norm weights 1, biases 0, the rest
normal with std 0.02, each tensor from its own seeded generator) and written before the next:
at most one shard's tensors are in memory. The result is an ordinary HuggingFace folder
(config.json, model-0000i-of-0000n.safetensors and model.safetensors.index.json, or one
model.safetensors), written to a staging folder and renamed into place when complete.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from optimizer.core.errors import InputError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30}


def parse_size(text: str) -> int:
    """'2GB', '500MB', '1GiB' or a byte count -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise InputError(f"cannot read the size {text!r}", hint="e.g. 2GB, 500MB or 1GiB")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])


def parameter_shapes(config: Any) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter the checkpoint stores, in the model's order (a tied
    output projection is stored once, as the embedding)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def plan_shards(shapes: list[tuple[str, tuple[int, ...]]], itemsize: int, shard_bytes: int) -> list[list[str]]:
    """Parameter names per shard, in order: a shard closes before the tensor that would take it
    past `shard_bytes` (a tensor larger than that gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = itemsize * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def random_value(name: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """The value of one parameter: norms 1, biases 0, others N(0, 0.02^2) from `seed`."""
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    if "norm" in name and len(shape) == 1:
        return torch.ones(shape, dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * 0.02).to(dtype)


def write_random_checkpoint(values: dict[str, Any], out: Path, dtype: str = "bf16", shard_size: str = "2GB",
                            seed: int = 0, overwrite: bool = False) -> Path:
    """Write the checkpoint of config `values` (with model_type) to `out`; returns `out`."""
    from safetensors.torch import save_file
    from transformers import AutoConfig

    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}", hint="choose one of: " + ", ".join(DTYPES))
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists", hint="pass --overwrite to replace it, or another --out")
    values = dict(values)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    config.dtype = DTYPES[dtype]
    shapes = parameter_shapes(config)
    shards = plan_shards(shapes, DTYPES[dtype].itemsize, parse_size(shard_size))
    shape_of = dict(shapes)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    config.save_pretrained(staging)
    order = {name: i for i, (name, _) in enumerate(shapes)}
    files = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map, total = {}, 0
    for names, file in zip(shards, files):
        tensors = {n: random_value(n, shape_of[n], DTYPES[dtype], seed * 100003 + order[n]) for n in names}
        save_file(tensors, str(staging / file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update({n: file for n in names})
        del tensors
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out
