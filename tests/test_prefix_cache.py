"""Automatic prefix caching without a model: the key chain and index (runtime.prefix_cache),
the caching pools (runtime.cached_pools), and the scheduler driving them through fake
executors that model the cache memory itself (rows or blocks of token ids, read back to make
the next token), so a prefix copied from the wrong row, a block shared while still written,
or a cache entry overwritten while in use changes a request's tokens."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtime.prefix_cache as prefix_cache
from runtime.cached_pools import CachingBlockPool, CachingSlotPool
from runtime.executors import StaticExecutor, step_each
from runtime.kv_cache import BlockPool, SlotPool
from runtime.llm_engine import LLMEngine
from runtime.prefix_cache import PrefixIndex, block_keys, common_prefix
from runtime.sampling import SamplingParams
from runtime.sequence import Sequence
from tests.test_scheduler import EOS, alone, fake_next, one_hot

JUNK = -7  # what a placeholder decode row writes (the real kernel writes some key/value there)


# -- keys and index ---------------------------------------------------------------------------
def test_block_keys_chain_only_full_blocks_and_depend_on_everything_before():
    a = block_keys([1, 2, 3, 4, 5, 6, 7], 3)
    assert len(a) == 2  # the 7th token is not a full block
    assert block_keys([1, 2, 3, 4, 5, 6, 9], 3) == a
    assert block_keys([1, 2, 3, 4, 5, 0], 3)[0] == a[0] and block_keys([1, 2, 3, 4, 5, 0], 3)[1] != a[1]
    assert block_keys([0, 2, 3, 4, 5, 6], 3)[1] != a[1]  # an earlier token changes every later key
    assert block_keys([4, 5, 6], 3) != a[1:]  # a block's key depends on its position in the chain
    assert block_keys([1, 2, 3, 4, 5, 6], 3, parent=a[0], start=1) == a[1:]
    with pytest.raises(ValueError):
        block_keys([1], 0)


def test_common_prefix_checks_what_it_is_told():
    assert common_prefix([1, 2, 3, 4], [1, 2, 9]) == 2
    assert common_prefix([1, 2, 3], [1, 2, 3, 4], known=3) == 3
    assert common_prefix([5, 2, 3], [1, 2, 3], known=3) == 0  # a wrong hint is not believed


def test_index_matches_exact_shared_lengths_and_written_counts():
    index = PrefixIndex(block_size=2)
    index.put("a", [1, 2, 3, 4, 5, 6], written=6)
    index.put("b", [1, 2, 3, 9], written=1)
    index.put("c", [7, 7, 7, 7], written=4)
    assert index.match([1, 2, 3, 4, 5]) == {"a": (5, 6), "b": (3, 1)}
    assert index.match([1, 2]) == {"a": (2, 6), "b": (2, 1)}
    assert index.match([1]) == {} and index.match([2, 2, 3]) == {}
    index.extend("b", [1, 2, 3, 9, 4, 4], written=5)
    assert index.match([1, 2, 3, 9, 4, 4, 4]) == {"a": (3, 6), "b": (6, 5)}
    index.drop("a")
    assert set(index.match([1, 2, 3])) == {"b"}
    index.check()
    with pytest.raises(ValueError):
        index.extend("b", [1, 2], written=1)


def test_a_key_collision_never_makes_a_wrong_match(monkeypatch):
    """Even if every block had the same key, the index reports only true shared lengths."""
    monkeypatch.setattr(prefix_cache, "block_key", lambda parent, block: b"same")
    index = PrefixIndex(block_size=2)
    index.put("a", [1, 2, 3, 4], written=4)
    assert index.match([5, 6, 7, 8]) == {"a": (0, 4)}
    assert index.match([1, 2, 7, 8]) == {"a": (2, 4)}


# -- the slot pool ------------------------------------------------------------------------------
def test_slot_pool_parks_rows_takes_them_over_and_evicts_least_recently_used():
    pool = CachingSlotPool(2, capacity=32, block_size=2)
    prompt = [1, 2, 3, 4, 5, 6]
    assert pool.admit("a", 10, prompt) and pool.lookup("a", prompt) == (0, pool.slot("a"))
    pool.sync("a", prompt + [7], 7)
    pool.release("a")
    assert pool.parked() == [0] and pool.used == 0
    # a prompt extending the parked row's whole content takes that row over: nothing to copy
    longer = prompt + [7, 8, 9]
    assert pool.admit("b", 12, longer) and pool.slot("b") == 0
    assert pool.lookup("b", longer) == (7, 0)
    pool.sync("b", longer, 9)
    pool.release("b")
    assert pool.admit("c", 4, [5, 5, 5, 5]) and pool.slot("c") == 1  # an empty row before evicting
    assert pool.lookup("c", [5, 5, 5, 5]) == (0, 1)
    pool.sync("c", [5, 5, 5, 5], 4)
    pool.release("c")
    assert pool.parked() == [0, 1]  # least recently used first
    assert pool.admit("d", 4, [1, 2, 3, 0]) and pool.slot("d") == 0  # row 0 is the oldest: evicted
    assert pool.lookup("d", [1, 2, 3, 0]) == (3, 0)  # ... but what it shares with the new prompt stays
    assert pool.admit("e", 4, [5, 5, 5, 5, 6]) and pool.slot("e") == 1
    assert pool.lookup("e", [5, 5, 5, 5, 6]) == (4, 1)
    assert not pool.admit("f", 4, [1, 2])
    pool.check()


def test_slot_pool_serves_a_running_rows_written_positions_only():
    pool = CachingSlotPool(3, capacity=64, block_size=4)
    shared = list(range(1, 21))
    assert pool.admit("lead", 30, shared + [90]) and pool.lookup("lead", shared + [90]) == (0, 0)
    assert pool.admit("next", 30, shared + [91])
    assert pool.lookup("next", shared + [91]) is None  # the leader is prefilling it: wait
    pool.sync("lead", shared + [90], 8)
    assert pool.lookup("next", shared + [91]) is None
    pool.sync("lead", shared + [90], 21)  # done: 20 shared tokens written
    assert pool.lookup("next", shared + [91]) == (20, 0)
    assert pool.admit("same", 30, shared + [90])
    assert pool.lookup("same", shared + [90]) == (20, 0)  # the last token is always computed
    pool.check()


def test_compaction_keeps_the_vacated_row_as_an_entry_first_to_go():
    pool = CachingSlotPool(3, capacity=16, block_size=2)
    for name, prompt in (("a", [1, 1]), ("b", [2, 2]), ("c", [3, 3, 3])):
        assert pool.admit(name, 8, prompt)
        pool.lookup(name, prompt)
        pool.sync(name, prompt, len(prompt))
    pool.release("a")
    pool.release("b")
    assert pool.parked() == [0, 1] and pool.lowest_free() == 0
    pool.move("c", 0)
    assert pool.slot("c") == 0 and pool.parked() == [2, 1]  # row 2 (a copy of c) goes first
    assert pool.index.tokens(2) == [3, 3, 3]
    pool.check()


def test_a_sequence_moved_before_its_lookup_leaves_only_what_it_kept():
    pool = CachingSlotPool(3, capacity=16, block_size=2)
    assert pool.admit("a", 8, [1, 1]) and pool.admit("b", 8, [2, 2])
    for name, prompt in (("a", [1, 1]), ("b", [2, 2])):
        pool.lookup(name, prompt)
        pool.sync(name, prompt, 2)
    assert pool.admit("c", 8, [3, 3, 3, 3])  # row 2, not looked up yet
    pool.release("a")
    pool.move("c", 0, written=9)  # the row's stale length: not what c has written
    assert pool.slot("c") == 0 and 2 not in pool.parked()  # nothing of c's was in row 2
    pool.check()


# -- the block pool -------------------------------------------------------------------------------
def test_block_pool_shares_computed_blocks_by_reference():
    pool = CachingBlockPool(8, block_size=4)
    prompt = list(range(1, 11))  # 2 full blocks + 2 tokens
    assert pool.admit("a", 10, prompt) and pool.lookup("a", prompt) == (0, None)
    pool.sync("a", prompt, 6)  # one full block computed: only that one is cached
    assert pool.cached_blocks() == 1
    assert not pool.admit("b", 10, prompt)  # "a" is computing its second block: wait for it
    other = prompt[:4] + [50, 51, 52, 53, 54]
    assert pool.admit("b", 9, other) and pool.lookup("b", other) == (4, None)
    assert pool.table("b")[0] == pool.table("a")[0] and pool.refs(pool.table("a")[0]) == 2
    pool.sync("a", prompt, 10)
    assert pool.admit("c", 9, prompt[:9]) and pool.lookup("c", prompt[:9]) == (8, None)
    assert pool.admit("d", 8, prompt[:8]) and pool.lookup("d", prompt[:8]) == (4, None)  # keeps its last token
    pool.check()
    assert pool.admit("e", 10, prompt) and pool.lookup("e", prompt) == (8, None)
    for name in "abcde":
        pool.release(name)
    assert pool.used == 0 and pool.cached_blocks() == 2
    pool.check()


def test_block_pool_evicts_least_recently_freed_tail_first():
    pool = CachingBlockPool(4, block_size=2)
    assert pool.admit("a", 5, [1, 2, 3, 4, 5])
    pool.sync("a", [1, 2, 3, 4, 5], 5)
    pool.release("a")  # blocks [1,2] and [3,4] cached, the third (1 token) not
    assert pool.cached_blocks() == 2 and pool.used == 0
    assert pool.admit("b", 3, [9, 9, 9]) and pool.cached_blocks() == 2  # the uncached blocks first
    assert pool.admit("c", 2, [8, 8]) and pool.cached_blocks() == 1  # then the tail [3, 4]
    assert pool.admit("d", 4, [1, 2, 3, 4]) is False  # 2 blocks wanted: the cached hit [1, 2], none free
    pool.release("c")
    assert pool.admit("d", 4, [1, 2, 3, 4]) and pool.lookup("d", [1, 2, 3, 4]) == (2, None)
    pool.check()


# -- the scheduler over memory-modelling executors -------------------------------------------------
class RowExecutor(StaticExecutor):
    """StaticExecutor's row management (compaction, prefix loads, release) over rows of token
    ids instead of keys and values; a placeholder decode row writes JUNK as the kernel would."""

    def __init__(self, slots: int, capacity: int) -> None:  # no session: the rows are the cache
        self.pool = SlotPool(slots, capacity)
        self.max_sequences, self.capacity = slots, capacity
        self.rows = np.full((slots, 1, capacity), JUNK, np.int64)
        self._arrays = [self.rows]
        self.slot_len = np.zeros(slots, np.int64)
        self.moves = 0
        self.computed = 0  # prompt tokens prefilled, all sequences together

    def _next(self, slot: int) -> np.ndarray:
        return one_hot(fake_next(self.rows[slot, 0, :self.slot_len[slot]].tolist()))

    def prefill(self, seq: Sequence, start: int, end: int) -> np.ndarray:
        slot = self.pool.slot(seq.request_id)
        assert self.slot_len[slot] == start, "prefill does not continue the row"
        self.rows[slot, 0, start:end] = seq.all_ids[start:end]
        self.slot_len[slot] = end
        self.computed += end - start
        return self._next(slot)

    def decode(self, seqs: list[Sequence]) -> np.ndarray:
        self.compact()
        slots = [self.pool.slot(s.request_id) for s in seqs]
        for row in set(range(max(slots) + 1)) - set(slots):
            if self.slot_len[row] < self.capacity:
                self.rows[row, 0, self.slot_len[row]] = JUNK
        out = []
        for seq, slot in zip(seqs, slots):
            assert self.slot_len[slot] == seq.num_tokens - 1, "decode does not continue the row"
            self.rows[slot, 0, self.slot_len[slot]] = seq.last_token
            self.slot_len[slot] += 1
            out.append(self._next(slot))
        return np.stack(out)

    step = step_each


class BlockExecutor:
    """A paged executor over blocks of token ids; it asserts that no cached (shared) block is
    ever written."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.pool = BlockPool(num_blocks, block_size)
        self.max_sequences = num_blocks
        self.memory = np.full((num_blocks, block_size), JUNK, np.int64)
        self.computed = 0

    def enable_prefix_caching(self) -> None:
        self.pool = CachingBlockPool(self.pool.num_blocks, self.pool.block_size)

    def _write(self, seq: Sequence, start: int, end: int) -> np.ndarray:
        table, size = self.pool.table(seq.request_id), self.pool.block_size
        for pos in range(start, end):
            block = table[pos // size]
            assert not (self.pool.prefix_caching and self.pool.is_cached(block)), "wrote a cached block"
            self.memory[block, pos % size] = seq.all_ids[pos]
        tokens = [int(self.memory[table[p // size], p % size]) for p in range(end)]
        return one_hot(fake_next(tokens))

    def prefill(self, seq: Sequence, start: int, end: int) -> np.ndarray:
        self.computed += end - start
        return self._write(seq, start, end)

    def decode(self, seqs: list[Sequence]) -> np.ndarray:
        return np.stack([self._write(s, s.num_tokens - 1, s.num_tokens) for s in seqs])

    step = step_each

    def release(self, seq: Sequence) -> None:
        pass



shared_requests = st.tuples(
    st.lists(st.lists(st.integers(1, 49), min_size=30, max_size=30), min_size=1, max_size=3),  # bases
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 30),  # base, how much of it
                       st.lists(st.integers(1, 49), max_size=6),  # own tail
                       st.integers(1, 12), st.integers(0, 10),  # max_new_tokens, arrival step
                       st.one_of(st.none(), st.integers(0, 30))),  # abort at step
             min_size=1, max_size=12))


def serve(executor, bases, reqs, chunk: int, caching: bool = True):
    engine = LLMEngine(executor, eos_token_ids=[EOS], prefill_chunk=chunk, prefix_caching=caching)
    pool = engine.scheduler.pool
    seqs, step = [], 0
    pending = sorted(range(len(reqs)), key=lambda i: reqs[i][4])
    while pending or engine.has_work:
        while pending and reqs[pending[0]][4] <= step:
            i = pending.pop(0)
            base, n, tail, max_new, _, abort_at = reqs[i]
            prompt = (bases[base % len(bases)][:n] + tail) or [1]
            seq = engine.add_request(prompt, SamplingParams(max_new_tokens=max_new, ignore_eos=True),
                                     request_id=f"r{i}", detokenize=False)
            seqs.append((seq, abort_at))
        for seq, abort_at in seqs:
            if abort_at == step:
                engine.abort(seq.request_id)
        engine.step()
        pool.check()
        step += 1
        assert step < 3000, "a request waits forever"
    assert pool.used == 0 and not engine.sequences
    for seq, _ in seqs:
        if seq.finish_reason != "abort":
            assert seq.output_ids == alone(seq.prompt_ids, seq.params), seq.request_id
            assert seq.cached_tokens is not None and seq.cached_tokens < len(seq.prompt_ids)
    return engine


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=shared_requests, slots=st.integers(1, 4), chunk=st.integers(1, 12))
def test_static_rows_with_prefix_caching_give_every_request_its_own_tokens(data, slots, chunk):
    bases, reqs = data
    serve(RowExecutor(slots, capacity=48), bases, reqs, chunk)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=shared_requests, blocks=st.integers(12, 30), block_size=st.sampled_from([2, 4]),
       chunk=st.integers(1, 12))
def test_shared_blocks_with_preemption_give_every_request_its_own_tokens(data, blocks, block_size, chunk):
    bases, reqs = data
    executor = BlockExecutor(blocks, block_size)
    reqs = [r for r in reqs if r[1] + len(r[2]) + r[3] <= blocks * block_size]
    serve(executor, bases, reqs, chunk)


@pytest.mark.parametrize("make", [lambda: RowExecutor(4, capacity=64), lambda: BlockExecutor(64, 4)],
                         ids=["static", "paged"])
def test_a_shared_prefix_is_computed_once(make):
    """Four requests sharing 40 tokens, arriving together: with caching the prefix is computed
    once (the others wait for the first one's prefill, or share its blocks), tokens unchanged."""
    prefix = [(7 * i) % 47 + 1 for i in range(40)]
    reqs = [(0, 40, [i + 1, i + 2], 5, 0, None) for i in range(4)]
    off, on = make(), make()
    serve(off, [prefix], reqs, chunk=8, caching=False)
    engine = serve(on, [prefix], reqs, chunk=8)
    assert off.computed == 4 * 42
    if isinstance(on, RowExecutor):  # the rows: 40 shared tokens copied into three of them
        assert on.computed == 42 + 3 * 2 and engine.total_cached_tokens == 3 * 40
    else:  # the blocks: the first request's full blocks, as soon as they are computed
        assert on.computed < 42 + 3 * 10 and engine.total_cached_tokens >= 3 * 32
    assert engine.total_queried_tokens == 4 * 42


def test_a_row_vacated_by_compaction_serves_as_a_cache_entry():
    """B (slot 0) ends first, so A moves down from slot 1 at the next decode; the row it left
    is a cache entry of A's prompt, reused by C, which arrives after A has ended."""
    executor = RowExecutor(2, capacity=40)
    engine = LLMEngine(executor, eos_token_ids=[EOS], prefill_chunk=32)
    prompt = [(3 * i) % 40 + 2 for i in range(20)]  # more than a block (16) of the key chain
    b = engine.add_request([5], SamplingParams(max_new_tokens=1, ignore_eos=True), detokenize=False)
    a = engine.add_request(prompt, SamplingParams(max_new_tokens=6, ignore_eos=True), detokenize=False)
    while engine.has_work:
        engine.step()
    assert b.finished and a.finished and executor.moves == 1
    assert engine.scheduler.pool.parked() == [1, 0]  # the vacated row first in line for eviction
    c = engine.add_request(prompt + [7], SamplingParams(max_new_tokens=4, ignore_eos=True), detokenize=False)
    while engine.has_work:
        engine.step()
    assert c.cached_tokens == len(prompt) and executor.computed == 20  # A's prompt only (C's last: a decode)
    assert c.output_ids == alone(c.prompt_ids, c.params) and a.output_ids == alone(a.prompt_ids, a.params)
