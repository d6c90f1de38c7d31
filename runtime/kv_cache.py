"""KV-cache space accounting for the scheduler: who holds which part of the cache.

Two pools, one interface (`admit`, `ensure`, `release`, `used`, `total`, `check`, and for
prefix caching `lookup` and `sync`, which do nothing here: runtime.cached_pools has the
caching pools):

- `SlotPool` (static layout): `num_slots` rows of `capacity` positions. A sequence takes a
  whole row at admission and keeps it to the end, so a running sequence never runs out.
- `BlockPool` (paged layout): `num_blocks` blocks of `block_size` positions. A sequence's
  block table grows as it does; when no block is free the scheduler preempts.

These are pure bookkeeping (no tensors): the executors map slots and block tables onto
their buffers. `check()` verifies the accounting and is used by the property tests.
"""

from __future__ import annotations

from typing import Sequence as Seq


class SlotPool:
    prefix_caching = False

    def __init__(self, num_slots: int, capacity: int) -> None:
        if num_slots < 1 or capacity < 1:
            raise ValueError(f"a slot pool needs slots >= 1 and capacity >= 1, got {num_slots}, {capacity}")
        self.num_slots, self.capacity = num_slots, capacity
        self._free = list(range(num_slots - 1, -1, -1))  # pop() gives the lowest slot
        self._slot: dict[str, int] = {}

    @property
    def total(self) -> int:
        return self.num_slots

    @property
    def used(self) -> int:
        return len(self._slot)

    def max_tokens(self) -> int:
        """The most positions one sequence can ever hold."""
        return self.capacity

    def admit(self, seq_id: str, tokens: int, prompt: Seq[int] = ()) -> bool:
        """Give `seq_id` a slot for up to `tokens` positions (its whole future), if one is free."""
        if seq_id in self._slot:
            raise ValueError(f"sequence {seq_id} already holds slot {self._slot[seq_id]}")
        if tokens > self.capacity or not self._free:
            return False
        self._free.sort(reverse=True)  # lowest free slot first: running rows stay packed at the front
        self._slot[seq_id] = self._free.pop()
        return True

    def ensure(self, seq_id: str, tokens: int) -> bool:
        return seq_id in self._slot and tokens <= self.capacity

    def lookup(self, seq_id: str, tokens: Seq[int]) -> tuple[int, int | None] | None:
        """(tokens already cached, where to copy them from) at a sequence's first prefill."""
        return 0, None

    def sync(self, seq_id: str, tokens: Seq[int], computed: int) -> None:
        """A running sequence's tokens, the first `computed` of them in its cache."""

    def release(self, seq_id: str) -> None:
        slot = self._slot.pop(seq_id, None)
        if slot is not None:
            self._free.append(slot)

    def slot(self, seq_id: str) -> int:
        return self._slot[seq_id]

    def move(self, seq_id: str, slot: int) -> None:
        """Re-home a sequence into a free slot (the executor has copied its cache rows)."""
        if slot not in self._free:
            raise ValueError(f"slot {slot} is not free")
        self._free.remove(slot)
        self._free.append(self._slot[seq_id])
        self._slot[seq_id] = slot

    def lowest_free(self) -> int | None:
        return min(self._free) if self._free else None

    def highest_held(self) -> tuple[str, int] | None:
        return max(self._slot.items(), key=lambda kv: kv[1]) if self._slot else None

    def holders(self) -> set[str]:
        return set(self._slot)

    def check(self) -> None:
        held = list(self._slot.values())
        assert len(set(held)) == len(held), "a slot is held twice"
        assert not set(held) & set(self._free), "a held slot is also free"
        assert sorted(held + self._free) == list(range(self.num_slots)), "slots leaked"


class BlockPool:
    prefix_caching = False

    def __init__(self, num_blocks: int, block_size: int, max_blocks_per_sequence: int | None = None) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"a block pool needs blocks >= 1 and block size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.max_blocks_per_sequence = min(max_blocks_per_sequence or num_blocks, num_blocks)
        self._free = list(range(num_blocks - 1, -1, -1))
        self._tables: dict[str, list[int]] = {}

    @property
    def total(self) -> int:
        return self.num_blocks

    @property
    def used(self) -> int:
        return self.num_blocks - len(self._free)

    def max_tokens(self) -> int:
        return self.max_blocks_per_sequence * self.block_size

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def admit(self, seq_id: str, tokens: int, prompt: Seq[int] = ()) -> bool:
        """A block table covering `tokens` positions (the tokens to prefill), if blocks are free."""
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id} already holds blocks")
        if tokens > self.max_tokens() or self.blocks_for(tokens) > len(self._free):
            return False
        self._tables[seq_id] = [self._take() for _ in range(self.blocks_for(tokens))]
        return True

    def ensure(self, seq_id: str, tokens: int) -> bool:
        """Grow the table to cover `tokens` positions; False (nothing taken) if blocks run out."""
        table = self._tables.get(seq_id)
        if table is None or tokens > self.max_tokens():
            return False
        more = self.blocks_for(tokens) - len(table)
        if more <= 0:  # the common case: a decode step inside its last block
            return True
        if more > len(self._free):
            return False
        table += [self._take() for _ in range(more)]
        return True

    def _take(self) -> int:
        """A free block (the caching pool takes its least recently used one)."""
        return self._free.pop()

    def release(self, seq_id: str) -> None:
        self._free += self._tables.pop(seq_id, [])

    lookup = SlotPool.lookup
    sync = SlotPool.sync

    def table(self, seq_id: str) -> list[int]:
        return self._tables[seq_id]

    def holders(self) -> set[str]:
        return set(self._tables)

    def check(self) -> None:
        held = [b for t in self._tables.values() for b in t]
        assert len(set(held)) == len(held), "a block is held twice"
        assert sorted(held + self._free) == list(range(self.num_blocks)), "blocks leaked"
