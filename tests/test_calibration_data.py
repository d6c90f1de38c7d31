"""Calibration/evaluation text: specs, packaged corpora, local files through `datasets`,
windows (consecutive or seeded), BOS, and too-little-text errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from transformers import AutoTokenizer

from calibration.data import load_text, parse_spec, token_windows, windows_hash
from optimizer.core.errors import InputError

TEXT = ("The quick brown fox jumps over the lazy dog. " * 40).strip()


@pytest.fixture(scope="module")
def tok(smol_tokenizer_dir):
    return AutoTokenizer.from_pretrained(smol_tokenizer_dir)


def test_parse_spec():
    spec = parse_spec("c4:128x512")
    assert (spec.source, spec.samples, spec.seq_len) == ("c4", 128, 512)
    assert parse_spec("/data/my:file.txt:4x16").source == "/data/my:file.txt"
    for bad in ("c4", "c4:128", "c4:0x512", "c4:axb"):
        with pytest.raises(InputError, match="bad text spec"):
            parse_spec(bad)


def test_wiki_tags_are_stripped():
    text = load_text("wiki")
    assert "<doc" not in text and "</doc>" not in text
    assert text.startswith("2007 European Parliament election in Romania\n")
    assert "\n\n" in text


def test_consecutive_windows_follow_the_text(tok):
    w = token_windows(tok, parse_spec("c4:3x32"))
    assert w.shape == (3, 32) and w.dtype == np.int64
    ids = tok(load_text("c4")[:2000], add_special_tokens=False).input_ids
    assert w.reshape(-1).tolist() == ids[:96]


def test_bos_windows_and_seeded_sampling(tok):
    w = token_windows(tok, parse_spec("tiny:4x16"), bos_token_id=1)
    assert (w[:, 0] == 1).all() and w.shape == (4, 16)
    a = token_windows(tok, parse_spec("tiny:4x16", seed=5))
    b = token_windows(tok, parse_spec("tiny:4x16", seed=5))
    c = token_windows(tok, parse_spec("tiny:4x16"))
    assert windows_hash(a) == windows_hash(b) != windows_hash(c)


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_local_files_through_datasets(tok, tmp_path, kind):
    path = tmp_path / f"data.{kind}"
    if kind == "txt":
        path.write_text(TEXT)
    elif kind == "jsonl":
        path.write_text(json.dumps({"text": TEXT}) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": [TEXT]}), path)
    w = token_windows(tok, parse_spec(f"{path}:5x20"))
    assert w.reshape(-1).tolist() == tok(TEXT, add_special_tokens=False).input_ids[:100]


def test_too_little_text(tok, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text(TEXT)
    with pytest.raises(InputError, match=r"gives only \d+ windows of 64 tokens"):
        token_windows(tok, parse_spec(f"{path}:100x64"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = token_windows(tok, parse_spec(f"{path}:100x64"), allow_fewer=True)
    assert 0 < len(w) < 100 and "using" in str(caught[0].message)


def test_bad_sources(tmp_path):
    with pytest.raises(InputError, match="neither a corpus name nor a file"):
        load_text("wikipedia-2030")
    bad = tmp_path / "rows.jsonl"
    bad.write_text(json.dumps({"body": "hello"}) + "\n")
    with pytest.raises(InputError, match="no 'text' field"):
        load_text(str(bad))
