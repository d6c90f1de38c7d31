"""optimize random-checkpoint: a random-weight safetensors folder of a preset shape, written
shard by shard, that loads like any HuggingFace checkpoint and builds an engine."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from optimizer.cli import main
from optimizer.core.errors import InputError
from optimizer.models.loader import load_model
from optimizer.models.random_checkpoint import parse_size, plan_shards, write_random_checkpoint
from optimizer.models.presets import PRESETS


def test_shards_close_before_the_tensor_that_would_overflow_them():
    shapes = [("a", (10,)), ("b", (20,)), ("c", (100,)), ("d", (5,))]
    assert plan_shards(shapes, 4, 120) == [["a", "b"], ["c"], ["d"]]  # c (400 B) alone, over the limit
    assert plan_shards(shapes, 4, 10 ** 6) == [["a", "b", "c", "d"]]
    assert parse_size("2GB") == 2 * 10 ** 9 and parse_size("1GiB") == 2 ** 30 and parse_size("512") == 512
    with pytest.raises(InputError, match="size"):
        parse_size("lots")


def test_a_sharded_checkpoint_loads_and_is_reproducible(tmp_path):
    out = tmp_path / "ckpt"
    result = CliRunner().invoke(main, ["random-checkpoint", "tiny-llama", "--out", str(out), "--shard-size", "1MB",
                                       "--dtype", "fp32", "--seed", "3"])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1
    stored = {}
    for f in files:
        shard = load_file(str(out / f))
        nbytes = sum(t.numel() * t.element_size() for t in shard.values())
        assert nbytes <= 10 ** 6 or len(shard) == 1, f  # over the limit only as one tensor of its own
        stored.update(shard)
    assert set(stored) == set(index["weight_map"])
    loaded = load_model(out, quiet=True).model.state_dict()
    for name, value in stored.items():
        assert torch.equal(loaded[name], value), name
    if PRESETS["tiny-llama"].get("tie_word_embeddings"):
        assert "lm_head.weight" not in stored  # a tied head is stored once, as the embedding
    again = write_random_checkpoint(dict(PRESETS["tiny-llama"]), tmp_path / "again", "fp32", "1MB", seed=3)
    digest = lambda d: [hashlib.sha256((d / f).read_bytes()).hexdigest() for f in files]  # noqa: E731
    assert digest(out) == digest(again)
    with pytest.raises(InputError, match="already exists"):
        write_random_checkpoint(dict(PRESETS["tiny-llama"]), out, "fp32", "1MB")
    assert not (tmp_path / "ckpt.partial").exists()
