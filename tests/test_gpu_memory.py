"""Sizing a paged KV pool from GPU memory: the arithmetic (no GPU needed) and the refusals."""

from __future__ import annotations

import pytest

from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine, SamplingParams
from runtime.gpu_memory import blocks_for_fraction
from runtime.sequence import Sequence

GIB = 2**30


def test_blocks_take_what_the_fraction_leaves():
    # 80 GiB device, 30 GiB free: 50 used; 0.9 allows 72 in use, so 22 GiB of 1 MiB blocks
    assert blocks_for_fraction(30 * GIB, 80 * GIB, 0.9, 2**20) == 22 * 1024
    assert blocks_for_fraction(30 * GIB, 80 * GIB, 1.0, 2**20) == 30 * 1024
    assert blocks_for_fraction(5 * GIB, 80 * GIB, 0.9, 2**20) == 0  # already past the fraction
    assert blocks_for_fraction(30 * GIB, 80 * GIB, 0.9, 3 * 2**20) == 22 * 1024 // 3


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fractions_outside_zero_one_are_refused(fraction):
    with pytest.raises(ValueError, match="fraction"):
        blocks_for_fraction(GIB, GIB, fraction, 1024)


def test_a_static_engine_refuses_gpu_memory_sizing(tmp_path):
    build_engine(BuildOptions(out=tmp_path / "e", random_weights=True, config="tiny-llama", quiet=True,
                              kv_slots=2, kv_capacity=64))
    engine = Engine.load(tmp_path / "e")
    with pytest.raises(Exception, match="gpu-memory-fraction sizes a paged KV cache"):
        engine.llm(gpu_memory_fraction=0.5)


def test_greedy_rows_are_those_the_engine_argmax_serves():
    assert Sequence("a", [1], SamplingParams(max_new_tokens=4), [2]).greedy_on_device()
    assert not Sequence("b", [1], SamplingParams(max_new_tokens=4, temperature=0.7), [2]).greedy_on_device()
    held = Sequence("c", [1], SamplingParams(max_new_tokens=4, min_tokens=2), [2])
    assert not held.greedy_on_device()  # EOS masked until 2 tokens: the host applies the mask
    held.append(5)
    held.append(6)
    assert held.greedy_on_device()


def test_the_profile_step_is_the_largest_step_a_pool_serves():
    from runtime.paged import pack_step, profile_chunks

    chunks = profile_chunks(1200, 512, 3, 16)  # 512 + 512 + 176 prompt tokens, 3 decode rows
    assert [len(ids) for ids, _, _ in chunks] == [512, 512, 176, 1, 1, 1]
    blocks = [b for _, _, table in chunks for b in table]
    assert blocks == list(range(32 + 32 + 11 + 3))  # each chunk on blocks of its own
    feeds = pack_step(chunks, 16)  # a valid packed step
    assert feeds["input_ids"].shape == (1, 1203) and feeds["attention_metadata"].tolist() == [512, 512]
    assert [len(ids) for ids, _, _ in profile_chunks(100, None, 0, 16)] == [100]
