"""Iteration-level scheduling: which sequences run in the next model step.

Each call to `schedule()` plans one iteration:

1. Admission, first come first served: the oldest waiting sequence is admitted as soon as
   the pool has room for it and fewer than `max_running` run; a later one never jumps
   ahead of it (no starvation of long prompts).
2. Prefill: sequences with more than one uncomputed token get chunks of at most
   `prefill_chunk` tokens, oldest first, up to `prefill_budget` tokens per iteration, so a
   long prompt does not stall the running decodes.
3. Decode: every running sequence with exactly one uncomputed token (its last sampled
   token) is decoded together, one token each. With a block pool each one first needs room
   for that token; if none is free, the newest running sequence is preempted: its cache is
   freed and it goes back to the front of the queue, to be recomputed from its tokens
   (prompt + output so far) when admitted again. The oldest sequence always progresses.

With a caching pool (runtime.cached_pools) a sequence's first prefill starts after the prompt
tokens already in the cache (`pool.lookup`, at least the last one left to compute); on the
static layout the plan lists the cached positions to copy into its row (`prefix_loads`), and a
sequence whose prefix an earlier one is still prefilling waits for it. Running sequences'
progress is handed to the pool (`pool.sync`) before lookups and releases.

The scheduler only plans and keeps the pool's accounting; the engine runs the plan, samples
and calls `finish` for sequences that end. It is pure Python and tested with a fake model.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from runtime.kv_cache import BlockPool, SlotPool
from runtime.sequence import Sequence


@dataclass
class StepPlan:
    prefill: list[tuple[Sequence, int, int]] = field(default_factory=list)  # (seq, start, end) token range
    decode: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    # (sequence, row to copy from, cached tokens): static rows to fill before the step runs
    prefix_loads: list[tuple[Sequence, int, int]] = field(default_factory=list)
    queried_tokens: int = 0  # prompt tokens of sequences that looked up the prefix cache
    cached_tokens: int = 0  # of which found cached

    @property
    def empty(self) -> bool:
        return not self.prefill and not self.decode


class Scheduler:
    def __init__(self, pool: SlotPool | BlockPool, max_running: int, prefill_chunk: int = 512,
                 prefill_budget: int | None = None,
                 on_release: Callable[[Sequence], None] | None = None) -> None:
        if max_running < 1 or prefill_chunk < 1:
            raise ValueError("max_running and prefill_chunk must be >= 1")
        self.pool = pool
        self.max_running = max_running
        self.prefill_chunk = prefill_chunk
        self.prefill_budget = prefill_budget or prefill_chunk
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.preemptions = 0
        self.on_release = on_release  # called before a sequence's cache space is freed
        self._unstarted: set[Sequence] = set()  # admitted, prefix cache not looked up yet

    def _release(self, seq: Sequence) -> None:
        if seq.request_id in self.pool.holders():
            if self.on_release is not None:
                self.on_release(seq)
            if self.pool.prefix_caching:  # what it wrote stays cached
                self.pool.sync(seq.request_id, seq.all_ids, seq.num_computed)
            self.pool.release(seq.request_id)

    # -- queue -----------------------------------------------------------------------------
    def fits(self, seq: Sequence) -> bool:
        """Whether the sequence can ever run: its whole length fits one sequence's share."""
        return seq.max_total_tokens <= self.pool.max_tokens()

    def add(self, seq: Sequence) -> None:
        if not self.fits(seq):
            raise ValueError(f"sequence {seq.request_id} needs {seq.max_total_tokens} cache positions, "
                             f"more than the {self.pool.max_tokens()} one sequence can hold")
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out (finished or aborted) and free its cache."""
        self._unstarted.discard(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._release(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- planning ----------------------------------------------------------------------------
    def _admit_tokens(self, seq: Sequence) -> int:
        # a slot is reserved for the whole future; blocks only for the tokens to prefill
        return seq.max_total_tokens if isinstance(self.pool, SlotPool) else seq.num_tokens

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        caching = self.pool.prefix_caching
        if caching and (self.waiting or self._unstarted):
            for seq in self.running:  # lookups ahead: the pool learns what is computed now
                self.pool.sync(seq.request_id, seq.all_ids, seq.num_computed)
        while self.waiting and len(self.running) < self.max_running:
            head = self.waiting[0]
            if not self.pool.admit(head.request_id, self._admit_tokens(head), head.all_ids if caching else ()):
                break  # FCFS: nobody overtakes the head of the queue
            self.waiting.popleft()
            head.num_computed = 0
            self.running.append(head)
            self._unstarted.add(head)

        waiting_for_prefix = ({s for s in self.running if s in self._unstarted and not self._start(s, plan)}
                              if self._unstarted else set())
        budget = self.prefill_budget
        for seq in self.running:
            if seq in waiting_for_prefix:
                continue
            pending = seq.num_tokens - seq.num_computed
            if pending > 1 and budget > 0:
                end = seq.num_computed + min(pending, self.prefill_chunk, budget)
                plan.prefill.append((seq, seq.num_computed, end))
                budget -= end - seq.num_computed

        preempted: set[Sequence] = set()  # this step's victims (identity: a set, not a list scan)
        for seq in list(self.running):
            if seq.num_tokens - seq.num_computed != 1 or seq in preempted or seq in waiting_for_prefix:
                continue
            while not self.pool.ensure(seq.request_id, seq.num_tokens):
                victim = self.running[-1]
                self._preempt(victim, plan)
                preempted.add(victim)
                if victim is seq:
                    break
            else:
                plan.decode.append(seq)
        return plan

    def _start(self, seq: Sequence, plan: StepPlan) -> bool:
        """Look the sequence's tokens up in the prefix cache before its first prefill: it
        starts after the cached ones (False: it waits for a sequence prefilling its prefix)."""
        hit = self.pool.lookup(seq.request_id, seq.all_ids)
        if hit is None:
            return False
        cached, source = hit
        self._unstarted.discard(seq)
        seq.num_computed = cached
        if seq.cached_tokens is None:  # the client's figure: a preempted sequence's recompute is not
            seq.cached_tokens = cached
        if self.pool.prefix_caching:
            plan.queried_tokens += seq.num_tokens
            plan.cached_tokens += cached
        if source is not None:
            plan.prefix_loads.append((seq, source, cached))
        return True

    def _preempt(self, seq: Sequence, plan: StepPlan) -> None:
        self.running.remove(seq)
        self._release(seq)
        self._unstarted.discard(seq)
        seq.num_computed = 0
        self.waiting.appendleft(seq)
        plan.preempted.append(seq)
        plan.prefill = [p for p in plan.prefill if p[0] is not seq]
        plan.prefix_loads = [p for p in plan.prefix_loads if p[0] is not seq]
        if seq in plan.decode:
            plan.decode.remove(seq)
        self.preemptions += 1
