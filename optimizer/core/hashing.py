"""sha256 of files, streamed in chunks (engine and weight files are hundreds of MB)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

_CHUNK = 8 << 20


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return digest.hexdigest()
