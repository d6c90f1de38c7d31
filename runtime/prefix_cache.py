"""Automatic prefix caching, the pure part: which cached tokens a new prompt can reuse.

Tokens are cut into blocks of `block_size`. A block's key hashes its parent's key with its
own tokens (a chain, as in vLLM v1's block hashing), so two equal keys stand for two equal
prefixes, from the first token on. Keys are 128-bit BLAKE2b digests; on top of that every
match is verified against the tokens themselves, so only exact token prefixes are reused:

    keys = block_keys([5, 6, 7, 8, 9], block_size=2)    # two keys: [5, 6] and [5, 6, 7, 8]
    index = PrefixIndex(block_size=2)
    index.put("slot 0", [5, 6, 7, 8, 9], written=5)
    index.match([5, 6, 7, 1])                            # {"slot 0": (3, 5)}: 3 tokens shared

`PrefixIndex` is the static layout's view (runtime.cached_pools.CachingSlotPool): holders are
cache rows, each holding one token sequence, of which the first `written` positions are in the
cache (the rest is promised: a running sequence's prompt still being prefilled). The paged
layout (CachingBlockPool) keys its cached blocks by `block_keys` directly.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Hashable, Sequence as Seq

ROOT = b""  # the parent key of a prompt's first block


def block_key(parent: bytes, block: Seq[int]) -> bytes:
    """The key of a block of tokens following the prefix whose key is `parent`."""
    return hashlib.blake2b(parent + array("q", block).tobytes(), digest_size=16).digest()


def block_keys(tokens: Seq[int], block_size: int, parent: bytes = ROOT, start: int = 0) -> list[bytes]:
    """Keys of the full blocks of `tokens` from block `start` on (`parent`: block start-1's key)."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    keys = []
    for begin in range(start * block_size, len(tokens) - block_size + 1, block_size):
        parent = block_key(parent, tokens[begin:begin + block_size])
        keys.append(parent)
    return keys


def common_prefix(a: Seq[int], b: Seq[int], known: int = 0) -> int:
    """Length of the longest common prefix of `a` and `b`, given that the first `known`
    tokens are believed equal (checked, then the rest compared token by token)."""
    known = min(known, len(a), len(b))
    if list(a[:known]) != list(b[:known]):
        known = 0
    n = known
    end = min(len(a), len(b))
    while n < end and a[n] == b[n]:
        n += 1
    return n


class PrefixIndex:
    """Holders (cache rows) and the token sequences they hold, found by shared prefix.

    Each holder has `tokens` and a count `written` of them that is in its cache. `match`
    finds, through the key chain, every holder sharing at least one full block with a query,
    and gives the exact shared length and the holder's written count; what may be reused is
    the smaller of the two."""

    def __init__(self, block_size: int = 16) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self._tokens: dict[Hashable, list[int]] = {}
        self._written: dict[Hashable, int] = {}
        self._keys: dict[Hashable, list[bytes]] = {}
        self._holders: dict[bytes, set[Hashable]] = {}  # block key -> holders with that prefix

    def __contains__(self, holder: Hashable) -> bool:
        return holder in self._tokens

    def holders(self) -> list[Hashable]:
        return list(self._tokens)

    def tokens(self, holder: Hashable) -> list[int]:
        return self._tokens[holder]

    def written(self, holder: Hashable) -> int:
        return self._written[holder]

    def put(self, holder: Hashable, tokens: Seq[int], written: int) -> None:
        """Make `holder` hold `tokens`, the first `written` of them in its cache."""
        self.drop(holder)
        self._tokens[holder], self._keys[holder] = [], []
        self.extend(holder, tokens, written)

    def extend(self, holder: Hashable, tokens: Seq[int], written: int) -> None:
        """The holder's tokens grew (`tokens` starts with what it held: only new blocks are
        hashed); `written` of them are now in its cache."""
        held, keys = self._tokens[holder], self._keys[holder]
        if len(tokens) < len(held) or not 0 <= written <= len(tokens):
            raise ValueError(f"holder {holder!r}: {len(tokens)} tokens ({written} written) do not extend "
                             f"the {len(held)} it holds")
        new = block_keys(tokens, self.block_size, keys[-1] if keys else ROOT, start=len(keys))
        for key in new:
            self._holders.setdefault(key, set()).add(holder)
        keys += new
        self._tokens[holder] = list(tokens)
        self._written[holder] = written

    def set_written(self, holder: Hashable, written: int) -> None:
        if not 0 <= written <= len(self._tokens[holder]):
            raise ValueError(f"holder {holder!r} holds {len(self._tokens[holder])} tokens, not {written}")
        self._written[holder] = written

    def drop(self, holder: Hashable) -> None:
        for key in self._keys.pop(holder, []):
            holders = self._holders[key]
            holders.discard(holder)
            if not holders:
                del self._holders[key]
        self._tokens.pop(holder, None)
        self._written.pop(holder, None)

    def match(self, tokens: Seq[int]) -> dict[Hashable, tuple[int, int]]:
        """Every holder sharing at least one full block with `tokens`:
        holder -> (exact shared length, holder's written count)."""
        depth: dict[Hashable, int] = {}
        parent = ROOT
        for begin in range(0, len(tokens) - self.block_size + 1, self.block_size):
            parent = block_key(parent, tokens[begin:begin + self.block_size])
            holders = self._holders.get(parent)
            if not holders:
                break
            for holder in holders:
                depth[holder] = begin + self.block_size
        return {h: (common_prefix(self._tokens[h], tokens, known), self._written[h]) for h, known in depth.items()}

    def check(self) -> None:
        """The key table agrees with every holder's tokens (property tests)."""
        for holder, tokens in self._tokens.items():
            assert self._keys[holder] == block_keys(tokens, self.block_size), f"stale keys for {holder!r}"
            assert 0 <= self._written[holder] <= len(tokens)
        pairs = {(k, h) for h, keys in self._keys.items() for k in keys}
        assert pairs == {(k, h) for k, hs in self._holders.items() for h in hs}, "key table out of step"
