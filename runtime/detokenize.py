"""Incremental detokenization for streaming: emit text only once it is stable.

Decoding token by token breaks multi-byte characters and tokenizers that merge spaces, so
we decode the whole generated sequence and emit the new suffix, holding back a trailing
replacement character (an incomplete UTF-8 sequence) until the next token completes it.
"""

from __future__ import annotations

from typing import Any


class IncrementalDetokenizer:
    """Text deltas for a growing id list, decoding only a short window per token: the text
    of ids[prefix:read] (already emitted) against ids[prefix:] (with the new ones). Both
    decodes start at the same token, so a tokenizer's start-of-text quirks cancel out."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""
        self._prefix = 0  # window start: the token before the unread ones
        self._read = 0  # ids before this are in `emitted`

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        before = self._decode(self.ids[self._prefix:self._read])
        text = self._decode(self.ids[self._prefix:])
        if not final and (text.endswith("\ufffd") or len(text) <= len(before)):
            return ""  # an incomplete UTF-8 sequence, or nothing printable yet
        new = text[len(before):]
        self._prefix, self._read = self._read, len(self.ids)
        self.emitted += new
        return new
