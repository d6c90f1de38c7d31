"""Calibration and evaluation text as token windows.

A spec `SOURCE:NxL` asks for N windows of L tokens from SOURCE: a packaged corpus by short
name (`c4`, `wiki`, `tiny`: the exllamav3 text files, see `optimizer.core.assets`) or a local
file read through `datasets` (.txt / .utf8 text, .jsonl / .json with a "text" field,
.parquet with a "text" column).

Windows are consecutive and non-overlapping from the start of the text (the project's
evaluation convention); with a seed, N windows are drawn at random instead (reproducible).
Wikipedia dumps have their `<doc ...>` tags stripped and articles joined by a blank line.
Windows start with BOS only for architectures that need it (Gemma).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optimizer.core.errors import InputError

CORPORA = {"c4": "c4.utf8", "wiki": "wiki.utf8", "tiny": "tiny.utf8"}
_SPEC = re.compile(r"^(?P<source>.+):(?P<n>\d+)x(?P<len>\d+)$")
_DOC_TAG = re.compile(r"^\s*<doc [^>]*>\s*$|^\s*</doc>\s*$", re.MULTILINE)


@dataclass(frozen=True)
class TextSpec:
    source: str
    samples: int
    seq_len: int
    seed: int | None = None

    def __str__(self) -> str:
        return f"{self.source}:{self.samples}x{self.seq_len}" + (f"@seed{self.seed}" if self.seed is not None else "")


def parse_spec(text: str, seed: int | None = None) -> TextSpec:
    """'c4:128x512' -> TextSpec('c4', 128, 512)."""
    m = _SPEC.match(text.strip())
    if not m or int(m["n"]) < 1 or int(m["len"]) < 2:
        raise InputError(f"bad text spec {text!r}",
                         hint="use SOURCE:NxL, e.g. c4:128x512 (SOURCE: " + ", ".join(CORPORA) +
                              ", or a .txt/.jsonl/.parquet file)")
    return TextSpec(m["source"], int(m["n"]), int(m["len"]), seed)


def check_source(source: str) -> None:
    """Fail early (before any model is loaded) on a source that cannot be read."""
    if source not in CORPORA and not Path(source).expanduser().is_file():
        raise InputError(f"text source {source!r} is neither a corpus name nor a file",
                         hint="corpora: " + ", ".join(CORPORA) + "; or a .txt, .jsonl or .parquet file")


def load_text(source: str) -> str:
    """The whole text of a packaged corpus or local file."""
    if source in CORPORA:
        from optimizer.core.assets import fetch_asset

        path = fetch_asset("text", quiet=True) / CORPORA[source]
        text = path.read_text(encoding="utf-8")
        return _strip_wiki(text) if source == "wiki" else text
    check_source(source)
    return "\n\n".join(_read_rows(Path(source).expanduser()))


def _strip_wiki(text: str) -> str:
    articles = [a.strip() for a in re.split(r"^\s*</doc>\s*$", text, flags=re.MULTILINE)]
    return "\n\n".join(_DOC_TAG.sub("", a).strip() for a in articles if a.strip())


def _read_rows(path: Path) -> list[str]:
    import datasets

    suffix = path.suffix.lower()
    datasets.disable_progress_bars()
    if suffix in (".txt", ".utf8", ".text", ".md"):
        ds = datasets.load_dataset("text", data_files=str(path), sample_by="document", split="train")
    elif suffix in (".jsonl", ".json"):
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
    elif suffix == ".parquet":
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    else:
        raise InputError(f"unsupported text file type {suffix!r}: {path}",
                         hint="use .txt/.utf8, .jsonl/.json (field 'text') or .parquet (column 'text')")
    if "text" not in ds.column_names:
        raise InputError(f"{path} has no 'text' field (fields: {', '.join(ds.column_names)})",
                         hint="store the text in a field named 'text'")
    return [t for t in ds["text"] if t]


def token_windows(tokenizer: Any, spec: TextSpec, bos_token_id: int | None = None,
                  allow_fewer: bool = False) -> np.ndarray:
    """(N, L) int64 windows. With `bos_token_id`, each window is BOS + L-1 text tokens."""
    body = spec.seq_len - (1 if bos_token_id is not None else 0)
    text = load_text(spec.source)
    ids = _tokenize_enough(tokenizer, text, spec.samples * body if spec.seed is None else None)
    available = len(ids) // body
    n = spec.samples
    if available < n:
        message = (f"{spec.source} gives only {available} windows of {spec.seq_len} tokens "
                   f"({len(ids)} tokens); {n} were asked for")
        if not allow_fewer or available == 0:
            raise InputError(message, hint="ask for fewer or shorter windows, or use more text")
        warnings.warn(message + f"; using {available}", stacklevel=2)
        n = available
    chunks = np.asarray(ids[: available * body], dtype=np.int64).reshape(available, body)
    if spec.seed is None:
        chunks = chunks[:n]
    else:
        chunks = chunks[np.sort(np.random.default_rng(spec.seed).choice(available, n, replace=False))]
    if bos_token_id is not None:
        chunks = np.concatenate([np.full((n, 1), bos_token_id, np.int64), chunks], axis=1)
    return chunks


def _tokenize_enough(tokenizer: Any, text: str, needed: int | None) -> list[int]:
    """Tokenize a growing prefix until it holds `needed` tokens (None: the whole text)."""
    if needed is None:
        return tokenizer(text, add_special_tokens=False).input_ids
    chars = min(len(text), needed * 6)
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False).input_ids
        if len(ids) > needed or chars >= len(text):
            # drop the last token: it may be cut by the prefix boundary
            return ids[:-1] if chars < len(text) else ids
        chars = min(len(text), chars * 2)


def windows_hash(windows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(windows, dtype=np.int64).tobytes()).hexdigest()
