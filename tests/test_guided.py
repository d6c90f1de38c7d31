"""Structured outputs' pieces: the bitmask, compiled-once constraints, a clear error without llguidance."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from optimizer.core.errors import InputError
from runtime.guided import Constraint, Guides, masked
from runtime.sampling import SamplingParams
from runtime.sequence import Sequence


def test_mask_bits_map_to_tokens():
    logits = np.arange(40, dtype=np.float64)
    words = np.zeros(2, np.uint32)  # 40 tokens in two 32-bit words, token t at bit t % 32 of word t // 32
    words[0] = (1 << 3) | (1 << 31)
    words[1] = 1 << (35 - 32)
    out = masked(logits, words.view(np.int32))
    assert np.flatnonzero(np.isfinite(out)).tolist() == [3, 31, 35] and out[35] == 35.0


@pytest.fixture(scope="module")
def guides(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    return tok, Guides(tok, len(tok), [tok.eos_token_id])


def test_a_choice_allows_only_its_strings_then_ends(guides):
    tok, g = guides
    guide = g.guide(Constraint("choice", json.dumps(["yes", "no"])))
    seq = Sequence("r", [1], SamplingParams(max_new_tokens=8), [tok.eos_token_id], tok)
    seq.guide = guide
    logits = np.zeros(len(tok))
    logits[tok.encode("maybe")[0]] = 50.0  # the model's favourite is not allowed
    logits[tok.encode("no")[0]] = 1.0
    token = seq.choose(logits)
    seq.append(token)
    assert seq.text == "no" and seq.finish_reason == "stop"  # the grammar is complete: the request ends


def test_constraints_compile_once_and_bad_ones_are_named(guides):
    _, g = guides
    schema = Constraint("json_schema", json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}}))
    before = g.compiled
    g.guide(schema)
    g.guide(schema)
    assert g.compiled == before + 1
    with pytest.raises(InputError, match="invalid regex"):
        g.guide(Constraint("regex", "(unclosed"))
    with pytest.raises(InputError, match="not valid JSON"):
        g.guide(Constraint("json_schema", "{nope"))
    with pytest.raises(InputError, match="unknown structured output kind"):
        Constraint("xml", "")


def test_without_llguidance_the_error_says_to_install_it(smol_tokenizer_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)  # import fails as if not installed
    with pytest.raises(InputError, match="llguidance") as e:
        Guides(None, 10, []).guide(Constraint("regex", "a"))
    assert "pip install llguidance" in e.value.hint


def test_a_refused_token_ends_the_sequence_with_an_error(guides):
    """A matcher that refuses the chosen token (llguidance's mask and its parser disagreeing)
    ends that sequence with "error" and says why, instead of raising out of the engine's step."""
    from runtime.guided import GrammarError

    tok, _ = guides

    class Refusing:
        done = False

        def apply(self, logits: np.ndarray) -> np.ndarray:
            return logits

        def consume(self, token: int) -> None:
            raise GrammarError(f"the grammar refused token {token}: forced bytes")

    seq = Sequence("r", [1], SamplingParams(max_new_tokens=8), [tok.eos_token_id], tok)
    seq.guide = Refusing()
    logits = np.zeros(len(tok))
    logits[7] = 5.0
    seq.append(seq.choose(logits))
    assert seq.finish_reason == "error" and seq.error == "the grammar refused token 7: forced bytes"
