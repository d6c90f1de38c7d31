"""Property tests of the tokenizer-facing paths: any text a client sends (control characters,
lone surrogates, very long single tokens) encodes to ids inside the vocabulary or is refused as
an InputError; any ids the engine produces stream out as exactly the text of decoding them
whole (runtime/detokenize.py)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from optimizer.core.errors import InputError
from runtime.detokenize import IncrementalDetokenizer
from tests.api_fuzz import CHARS, TEXT
from tests.test_server_limits import engine  # noqa: F401  (the tiny engine fixture)

SETTINGS = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


def has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@SETTINGS
@given(text=st.one_of(TEXT, st.text(CHARS, min_size=1, max_size=300)))
def test_any_text_encodes_inside_the_vocabulary_or_is_refused(engine, text):
    vocab = len(engine.tokenizer)
    try:
        ids = engine.encode(text)
    except InputError as e:
        assert has_lone_surrogate(text) and "not valid Unicode" in e.message
        return
    assert not has_lone_surrogate(text)
    assert all(isinstance(i, int) and 0 <= i < vocab for i in ids)  # (control characters may encode to none:
    # the server answers such a prompt with a 400, "the prompt encodes to no tokens")


@SETTINGS
@given(ids=st.lists(st.integers(0, 49151), max_size=40))
def test_streamed_text_is_the_whole_decode(engine, ids):
    detok = IncrementalDetokenizer(engine.tokenizer)
    streamed = "".join(detok.push(i) for i in ids) + detok.flush()
    assert streamed == engine.tokenizer.decode(ids, skip_special_tokens=True)


@SETTINGS
@given(text=st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60))
def test_generated_text_round_trips_through_the_stream(engine, text):
    """Ids of real text (multi-byte characters split over byte-level tokens) stream out as that text."""
    ids = engine.tokenizer(text).input_ids
    detok = IncrementalDetokenizer(engine.tokenizer)
    streamed = "".join(detok.push(i) for i in ids) + detok.flush()
    assert streamed == engine.tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("length", [1, 5000, 50000])
def test_a_very_long_single_token_run_encodes(engine, length):
    for unit in ("a", "\u4e2d", "\U0001f600", "\x00"):
        ids = engine.encode(unit * length)
        assert 0 < len(ids) <= 4 * length
