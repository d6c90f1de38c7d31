"""Per-request stopping: stop tokens, EOS and ignore_eos, min_tokens, stop strings held back."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from optimizer.core.errors import InputError
from runtime.sampling import SamplingParams
from runtime.sequence import Sequence


@pytest.fixture(scope="module")
def tok(smol_tokenizer_dir):
    return AutoTokenizer.from_pretrained(smol_tokenizer_dir)


def feed(seq: Sequence, ids: list[int]) -> list[str]:
    pieces = []
    for t in ids:
        pieces.append(seq.append(t))
        if seq.finished:
            break
    return pieces


def test_stop_string_ends_the_text_before_it_and_holds_back_partial_matches(tok):
    ids = tok("The cat sat on the mat. Then it slept.").input_ids
    seq = Sequence("a", [1], SamplingParams(max_new_tokens=50, stop=(" on the",)), tokenizer=tok)
    pieces = feed(seq, ids)
    assert seq.finish_reason == "stop" and seq.text == "The cat sat"
    assert "".join(pieces) == seq.text
    assert all(" on" not in p for p in pieces)  # " on" was held back: it could start the stop string


def test_text_is_released_in_full_when_no_stop_string_matches(tok):
    text = "héllo wörld 🙂 and more"
    ids = tok(text).input_ids
    seq = Sequence("a", [1], SamplingParams(max_new_tokens=len(ids), stop=("zzz",)), tokenizer=tok)
    pieces = feed(seq, ids)
    assert seq.finish_reason == "length" and "".join(pieces) == seq.text == tok.decode(ids)


def test_min_tokens_masks_eos_and_stop_tokens_until_reached():
    params = SamplingParams(max_new_tokens=5, min_tokens=3, stop_token_ids=(7,))
    seq = Sequence("a", [1], params, eos_token_ids=[2])
    eos_heavy = np.zeros(10, np.float32)
    eos_heavy[2], eos_heavy[7], eos_heavy[4] = 5.0, 4.0, 1.0
    chosen = []
    while not seq.finished:
        chosen.append(seq.choose(eos_heavy))
        seq.append(chosen[-1])
    assert chosen == [4, 4, 4, 2] and seq.finish_reason == "stop"


def test_ignore_eos_keeps_stop_tokens():
    seq = Sequence("a", [1], SamplingParams(max_new_tokens=5, ignore_eos=True, stop_token_ids=(7,)),
                   eos_token_ids=[2])
    feed(seq, [2, 2, 7, 3])
    assert seq.output_ids == [2, 2, 7] and seq.finish_reason == "stop"


def test_bad_sampling_values_are_refused():
    with pytest.raises(InputError, match="min_tokens"):
        SamplingParams(max_new_tokens=3, min_tokens=4)
    with pytest.raises(InputError, match="stop strings"):
        SamplingParams(stop=("",))
