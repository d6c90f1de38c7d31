"""The cache pools with automatic prefix caching (runtime.kv_cache's pools, extended).

Both keep their plain pool's interface and add `lookup` (how many of a starting sequence's
tokens are already in its cache, and from where) and `sync` (a running sequence's tokens and
how many are computed). Only positions already written are ever handed out: a running
sequence's blocks or row positions become reusable once computed, never before.

- `CachingSlotPool` (static layout, CPU). A finished sequence's row stays as a cache entry
  ("parked") until a slot is needed: admission takes a parked row whose whole content the new
  prompt extends (nothing lost, nothing copied), else an empty row, else the least recently
  used parked row. At its first prefill a sequence takes the longest written prefix any row
  holds, running or parked: the executor copies those positions into its row
  (`StaticExecutor.load_prefixes`) and prefill starts after them. A sequence whose prompt a
  running sequence is still prefilling waits for it, rather than computing the same prefix
  alongside it. Memory stays that of the slots.
- `CachingBlockPool` (paged layout). Full computed blocks are registered under their key
  chain (runtime.prefix_cache.block_keys); a new sequence's table starts with the cached
  blocks of its prompt, shared by reference (reference counts). Freed blocks keep their
  content in an LRU free queue and are evicted only when a block must be handed out. A
  prompt whose prefix a running sequence is still prefilling is not admitted until it is done
  (matching happens at admission here, where the blocks are taken).

Either way at least the last prompt token is computed, so there are logits to sample from.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence as Seq

from runtime.kv_cache import BlockPool, SlotPool
from runtime.prefix_cache import ROOT, PrefixIndex, block_key, block_keys

DEFAULT_BLOCK_SIZE = 16  # static layout: the granularity of the key chain (matches are exact to the token)


class CachingSlotPool(SlotPool):
    prefix_caching = True

    def __init__(self, num_slots: int, capacity: int, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        super().__init__(num_slots, capacity)
        self.index = PrefixIndex(block_size)  # holders: slot numbers, running or parked
        self._parked: OrderedDict[int, None] = OrderedDict()  # least recently used first
        self._started: set[str] = set()  # sequences past their lookup (their rows count as written)

    def admit(self, seq_id: str, tokens: int, prompt: Seq[int] = ()) -> bool:
        if seq_id in self._slot:
            raise ValueError(f"sequence {seq_id} already holds slot {self._slot[seq_id]}")
        if tokens > self.capacity:
            return False
        matches = self.index.match(prompt) if prompt else {}
        whole = [(written, slot) for slot, (shared, written) in matches.items()
                 if slot in self._parked and shared >= written > 0]
        if whole:  # a parked row the prompt extends: taken over as it is
            kept, slot = max(whole)
            del self._parked[slot]
        elif self._free:
            self._free.sort(reverse=True)
            slot, kept = self._free.pop(), 0
        elif self._parked:  # evict the least recently used entry, keeping what it shares
            slot, _ = self._parked.popitem(last=False)
            kept = min(matches.get(slot, (0, 0)))
        else:
            return False
        self._slot[seq_id] = slot
        self.index.put(slot, prompt, kept)
        return True

    def lookup(self, seq_id: str, tokens: Seq[int]) -> tuple[int, int | None] | None:
        """(cached tokens, row to copy them from) for a sequence's first prefill, or None when
        a running sequence is still prefilling more of this prompt than is written anywhere:
        then wait for it."""
        slot = self._slot[seq_id]
        started = {self._slot[s] for s in self._started}
        best, source, promised = 0, slot, 0
        for holder, (shared, written) in self.index.match(tokens).items():
            if holder != slot and holder in started and written < len(self.index.tokens(holder)) - 1:
                promised = max(promised, shared)  # a running sequence still prefilling this prefix
            if min(shared, written) > best or (holder == slot and min(shared, written) == best):
                best, source = min(shared, written), holder
        if promised > best:
            return None
        n = min(best, len(tokens) - 1)
        if source in self._parked:
            self._parked.move_to_end(source)
        self.index.set_written(slot, n)
        self._started.add(seq_id)
        return n, source

    def sync(self, seq_id: str, tokens: Seq[int], computed: int) -> None:
        slot = self._slot[seq_id]
        written = computed if seq_id in self._started else self.index.written(slot)
        self.index.extend(slot, tokens, written)

    def release(self, seq_id: str) -> None:
        slot = self._slot.pop(seq_id, None)
        if slot is not None:
            self._started.discard(seq_id)
            self._park(slot, self.index.tokens(slot)[:self.index.written(slot)])

    def _park(self, row: int, tokens: Seq[int], newest: bool = True) -> None:
        """Make `row` a cache entry of `tokens` (all written), or an empty row if there are none."""
        if not tokens:
            self.index.drop(row)
            self._free.append(row)
            return
        self.index.put(row, tokens, len(tokens))
        self._parked[row] = None
        self._parked.move_to_end(row, last=newest)

    def move(self, seq_id: str, slot: int, tokens: Seq[int] | None = None, written: int | None = None) -> None:
        """Re-home a sequence (compaction: the executor copied the `written` positions of its
        row; `tokens`: its tokens now, where known; a sequence not started yet has written only
        what admission kept of the row). A parked target is evicted; the old row
        stays a cache entry of what it holds, first in line for eviction (the running sequence
        holds the same)."""
        if slot in self._parked:
            del self._parked[slot]
        elif slot in self._free:
            self._free.remove(slot)
        else:
            raise ValueError(f"slot {slot} is not free")
        old = self._slot[seq_id]
        held = self.index.tokens(old) if tokens is None else tokens
        if written is None or seq_id not in self._started:  # before its lookup only what it kept is its own
            written = self.index.written(old)
        written = min(written, len(held))
        self.index.put(slot, held, self.index.written(old))
        self._slot[seq_id] = slot
        self._park(old, held[:written], newest=False)

    def lowest_free(self) -> int | None:
        """Where compaction moves the highest running row: the lowest empty row below it,
        else the least recently used parked row below it (else the lowest free one)."""
        held = self.highest_held()
        top = held[1] if held else -1
        empty = [s for s in self._free if s < top]
        if empty:
            return min(empty)
        parked = [s for s in self._parked if s < top]
        if parked:
            return parked[0]
        return min([*self._free, *self._parked], default=None)

    def parked(self) -> list[int]:
        return list(self._parked)

    def check(self) -> None:
        held = list(self._slot.values())
        assert len(set(held)) == len(held), "a slot is held twice"
        parts = [set(held), set(self._free), set(self._parked)]
        assert sum(map(len, parts)) == self.num_slots and set().union(*parts) == set(range(self.num_slots)), \
            "slots leaked or double-booked"
        assert set(self.index.holders()) == set(held) | set(self._parked), "index holders out of step"
        assert all(self.index.written(s) > 0 for s in self._parked), "an empty row is parked"
        assert self._started <= set(self._slot), "a released sequence is still started"
        self.index.check()


class CachingBlockPool(BlockPool):
    prefix_caching = True

    def __init__(self, num_blocks: int, block_size: int, max_blocks_per_sequence: int | None = None) -> None:
        super().__init__(num_blocks, block_size, max_blocks_per_sequence)
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))  # next out first
        self._refs = [0] * num_blocks
        self._key: dict[int, bytes] = {}  # cached block -> its key
        self._block: dict[bytes, int] = {}  # key -> cached block
        self._content: dict[int, tuple[int, ...]] = {}  # cached block -> its tokens (checked on a hit)
        self._registered: dict[str, tuple[int, bytes]] = {}  # seq -> (blocks registered, last one's key)
        self._cached: dict[str, int] = {}  # seq -> tokens found cached at admission
        self._prefilling: dict[str, list[bytes]] = {}  # seq -> its prompt's block keys, until computed

    def _take(self) -> int:
        block, _ = self._free.popitem(last=False)
        key = self._key.pop(block, None)
        if key is not None:  # evicted: the least recently freed cached block
            del self._block[key]
            del self._content[block]
        self._refs[block] = 1
        return block

    def _hits(self, prompt: Seq[int], keys: list[bytes]) -> list[int]:
        """Cached blocks holding the prompt's leading full blocks (keys: theirs)."""
        hits = []
        for i, key in enumerate(keys):
            block = self._block.get(key)
            if block is None or self._content[block] != tuple(prompt[i * self.block_size:(i + 1) * self.block_size]):
                break
            hits.append(block)
        return hits

    def _promised(self, keys: list[bytes]) -> int:
        """The most leading blocks of `keys` a running sequence is still computing."""
        best = 0
        for theirs in self._prefilling.values():
            n = 0
            while n < min(len(keys), len(theirs)) and keys[n] == theirs[n]:
                n += 1
            best = max(best, n)
        return best

    def admit(self, seq_id: str, tokens: int, prompt: Seq[int] = ()) -> bool:
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id} already holds blocks")
        if tokens > self.max_tokens():
            return False
        keys = block_keys(prompt[:len(prompt) - 1], self.block_size) if prompt else []  # never the last token
        hits = self._hits(prompt, keys)
        if self._promised(keys) > len(hits):
            return False  # wait: a running sequence is computing more of this prefix
        need = max(self.blocks_for(tokens) - len(hits), 0)
        if need > len(self._free) - sum(1 for b in hits if self._refs[b] == 0):
            return False
        for block in hits:
            if self._refs[block] == 0:
                del self._free[block]
            self._refs[block] += 1
        self._tables[seq_id] = hits + [self._take() for _ in range(need)]
        self._registered[seq_id] = (len(hits), keys[len(hits) - 1] if hits else ROOT)
        self._cached[seq_id] = len(hits) * self.block_size
        if len(keys) > len(hits):
            self._prefilling[seq_id] = keys
        return True

    def lookup(self, seq_id: str, tokens: Seq[int]) -> tuple[int, int | None]:
        """The tokens whose blocks admission found cached (shared, so nothing to copy)."""
        return self._cached[seq_id], None

    def sync(self, seq_id: str, tokens: Seq[int], computed: int) -> None:
        """Register the sequence's blocks that are now full and computed (a block with equal
        content already cached stays private)."""
        done, parent = self._registered[seq_id]
        table, size = self._tables[seq_id], self.block_size
        while (done + 1) * size <= computed:
            content = tuple(tokens[done * size:(done + 1) * size])
            parent, block = block_key(parent, content), table[done]
            if parent not in self._block and block not in self._key:
                self._block[parent], self._key[block], self._content[block] = block, parent, content
            done += 1
        self._registered[seq_id] = (done, parent)
        if computed >= len(self._prefilling.get(seq_id, ())) * size:
            self._prefilling.pop(seq_id, None)

    def release(self, seq_id: str) -> None:
        """Unreference the sequence's blocks; a freed cached block goes to the back of the free
        queue (its last block first, so a prefix's head outlives its tail), others to the front."""
        self._registered.pop(seq_id, None)
        self._cached.pop(seq_id, None)
        self._prefilling.pop(seq_id, None)
        for block in reversed(self._tables.pop(seq_id, [])):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free[block] = None
                self._free.move_to_end(block, last=block in self._key)

    def cached_blocks(self) -> int:
        return len(self._key)

    def is_cached(self, block: int) -> bool:
        """Whether the block is registered (full, computed: never written again while cached)."""
        return block in self._key

    def refs(self, block: int) -> int:
        return self._refs[block]

    def check(self) -> None:
        counts = [0] * self.num_blocks
        for table in self._tables.values():
            assert len(set(table)) == len(table), "a table holds a block twice"
            for block in table:
                counts[block] += 1
        assert counts == self._refs, "reference counts out of step"
        assert set(self._free) == {b for b in range(self.num_blocks) if counts[b] == 0}, "blocks leaked"
        assert {self._block[k]: k for k in self._block} == self._key and set(self._content) == set(self._key), \
            "cache tables out of step"
