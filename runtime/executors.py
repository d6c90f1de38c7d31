"""Executors run a scheduler's plan on the engine: prefill chunks and batched decode steps.

Each owns the cache buffers of one layout and the pool that accounts for them:

- `StaticExecutor` (layout "static", or any GroupQueryAttention or CachedAttention engine): per layer
  and K/V one (slots, n_kv, capacity, hd) buffer.
  A prefill chunk runs on its slot's row; the first chunks of sequences in consecutive slots
  run as one call, right-padded to the longest (engines with `logits_positions` return each
  row's own last logits; see `prefill_groups`). A decode step runs every slot up to the
  highest busy one as one batch, bound by pointer as both past and present, so the
  GroupQueryAttention kernel appends in place (rows of idle or mid-prefill slots get a
  placeholder token written where their next real token will overwrite it). On CPU, busy
  rows are first compacted to the front, so finished sequences leave no idle rows behind.
- `ConcatExecutor` (layout "concat", any engine): each sequence keeps its own past arrays
  and runs at batch 1; correct everywhere, batched only in scheduling.
- `PagedExecutor` (layout "paged", CUDA only; `runtime.paged`): a block pool shared through
  block tables, every step's tokens packed into one row.

Each has `pool` (the scheduler's accounting), `max_sequences` (how many may run together),
`prefill`, `decode`, `step` (one iteration's prefill chunks and decodes), `release`, and
`enable_prefix_caching` (the pool becomes a caching one, runtime.cached_pools; otherwise it
returns why not). A static executor with prefix caching copies cached positions from row to
row (`load_prefixes`) and keeps finished sequences' rows as cache entries.
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort

from optimizer.core.engine_format import IN_PLACE_ATTENTION
from optimizer.core.errors import EngineError
from runtime.cached_pools import CachingSlotPool
from runtime.host_io import HostStepIO, aligned_zeros
from runtime.kv_cache import SlotPool
from runtime.paged import PagedExecutor, sequence_logits
from runtime.sequence import Sequence
from runtime.session import CUDA_PREFILL_BUDGET, PROVIDERS, DecoderSession, kv_dtype

DEFAULT_CONCAT_SLOTS = 8  # concat engines run their sequences one by one: few at a time
DEFAULT_CONCAT_CAPACITY = 4096  # unfused engines have no rotary table limit
PAD_WASTE = 0.25  # a batched prefill pads at most this share of its tokens


def prefill_groups(chunks: list[tuple[int, int, int]], waste: float = PAD_WASTE) -> list[list[int]]:
    """Which prefill chunks run as one call: (slot, start, length) per chunk -> groups of
    chunk indices. A group is first chunks (start 0) of sequences in consecutive slots,
    right-padded to its longest, with at most `waste` of its padded tokens being padding;
    every other chunk runs alone."""
    groups: list[list[int]] = []
    order = sorted(range(len(chunks)), key=lambda i: chunks[i][0])
    for i in order:
        slot, start, length = chunks[i]
        group = groups[-1] if groups else None
        if group and start == 0 and chunks[group[-1]][1] == 0 and chunks[group[-1]][0] == slot - 1:
            lengths = [chunks[j][2] for j in group] + [length]
            if max(lengths) * len(lengths) * (1 - waste) <= sum(lengths):
                group.append(i)
                continue
        groups.append([i])
    return groups


def row_mask(lengths: np.ndarray, width: int | None = None) -> np.ndarray:
    """The attention mask (rows, width) of right-padded rows of `lengths` positions each
    (width: the longest row's by default)."""
    columns = np.arange(int(lengths.max()) if width is None else width)
    return (columns[None, :] < lengths[:, None]).astype(np.int64)


def step_each(executor, prefill, decode) -> tuple[list[np.ndarray], np.ndarray | None]:
    """An iteration as separate calls: each prefill chunk, then one batched decode."""
    logits = [executor.prefill(seq, start, end) for seq, start, end in prefill]
    return logits, (executor.decode(decode) if decode else None)


class StaticExecutor:
    def __init__(self, session: DecoderSession, slots: int, capacity: int) -> None:
        kv = session.kv
        self.session, self.kv = session, kv
        self.pool = SlotPool(slots, capacity)
        self.max_sequences = slots
        self.capacity = capacity
        self._device = "cuda" if session.provider == PROVIDERS["cuda"] else "cpu"
        self._dtype = kv_dtype(kv.dtype)
        self._shape = (slots, kv.num_kv_heads, capacity, kv.head_dim)
        self._row_bytes = kv.num_kv_heads * capacity * kv.head_dim * np.dtype(self._dtype).itemsize
        self._buffers = []  # (past name, present name, OrtValue) per layer and K/V
        self._arrays: list[np.ndarray] = []  # CPU: the same memory as numpy, for compaction
        for i in range(kv.num_layers):
            for past, present in ((kv.past_key, kv.present_key), (kv.past_value, kv.present_value)):
                # zeros (copied to the device on CUDA; on CPU the OrtValue wraps the array)
                array = aligned_zeros(self._shape, self._dtype)
                value = ort.OrtValue.ortvalue_from_numpy(array, self._device, 0)
                self._buffers.append((past.format(i=i), present.format(i=i), value))
                if self._device == "cpu":
                    self._arrays.append(array)
        self.slot_len = np.zeros(slots, np.int64)  # positions written in each slot's row
        self._bindings: dict[tuple[int, int], ort.IOBinding] = {}  # (first row, rows) -> binding
        self.moves = 0  # sequences moved to a lower slot by compact()
        self._inputs = {i.name for i in session.session.get_inputs()}
        # engines that take each row's logits position can prefill several prompts per call
        self.batched_prefill = "logits_positions" in self._inputs
        self.prefill_budget = CUDA_PREFILL_BUDGET if self._device == "cuda" and self.batched_prefill else None
        # CPU: step inputs and logits in preallocated buffers (see runtime.host_io)
        self._host = (HostStepIO(session.session, slots, capacity)
                      if self._device == "cpu" and HostStepIO.supports(session.session) else None)

    def enable_prefix_caching(self) -> str | None:
        """Cache prompt prefixes in the slot rows (CPU); the reason where this executor cannot."""
        if not self._arrays:
            return "the static layout copies cached rows on the CPU provider only in this version"
        self.pool = CachingSlotPool(self.pool.num_slots, self.pool.capacity)
        return None

    def load_prefixes(self, loads: list[tuple[Sequence, int, int]]) -> None:
        """Before a step: give each starting sequence's row the `n` cached positions of row
        `source` (its own row: already there), so its prefill starts at n."""
        for seq, source, n in loads:
            slot = self.pool.slot(seq.request_id)
            if n > self.slot_len[source]:
                raise RuntimeError(f"row {source} holds {self.slot_len[source]} positions, {n} were asked for")
            if source != slot:
                for array in self._arrays:
                    array[slot, :, :n] = array[source, :, :n]
            self.slot_len[slot] = n

    def _binding(self, first: int, rows: int) -> ort.IOBinding:
        """A binding of rows [first, first+rows) of every cache buffer as past and present."""
        key = (first, rows)
        binding = self._bindings.get(key)
        if binding is None:
            binding = self.session.session.io_binding()
            binding.bind_output("logits", self._device)  # first: get_outputs()[0] is the logits
            shape = (rows,) + self._shape[1:]
            for past, present, value in self._buffers:
                ptr = value.data_ptr() + first * self._row_bytes
                binding.bind_input(past, self._device, 0, self._dtype, shape, ptr)
                binding.bind_output(present, self._device, 0, self._dtype, shape, ptr)
            self._bindings[key] = binding
        return binding

    def _run(self, binding: ort.IOBinding, ids: np.ndarray, mask: np.ndarray,
             last: np.ndarray | None = None) -> np.ndarray:
        """Logits (rows, K, V) of each row's positions `last[r]` ((rows,) for K = 1, or
        (rows, K); default: the last column); on CPU a view of the executor's logits buffer,
        valid until the next step."""
        rows, steps = ids.shape
        positions = np.full((rows, 1), steps - 1, np.int64) if last is None else last.reshape(rows, -1)
        if self._host is not None:
            return self._host.run(self.session.session, binding, ids, mask, positions)
        width = positions.shape[1]
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        if "logits_positions" in self._inputs:
            binding.bind_cpu_input("logits_positions", positions.astype(np.int64))
        elif (positions != np.arange(steps - width, steps)).any():
            raise EngineError("this engine returns the same logits positions for every row; rows of different "
                              "lengths need an engine with logits_positions (rebuild it with this version)")
        if "logits_from" in self._inputs:
            binding.bind_cpu_input("logits_from", np.asarray([steps - width], np.int64))
        if "position_ids" in self._inputs:  # engines built before the kv-layout pass still take it
            binding.bind_cpu_input("position_ids", np.maximum(mask.sum(1, keepdims=True) - steps, 0)
                                   + np.arange(steps))
        binding.bind_output("logits", self._device)  # a fresh logits tensor each step
        self.session.session.run_with_iobinding(binding, self.session.eager_run)
        logits = binding.get_outputs()[0].numpy()
        return logits[:, steps - width:] if logits.shape[1] != width else logits  # engines without slice-logits

    def prefill(self, seq: Sequence, start: int, end: int) -> np.ndarray:
        """Compute tokens [start, end) of the sequence into its slot; logits (V,) of the last."""
        slot = self.pool.slot(seq.request_id)
        if start != self.slot_len[slot]:
            raise RuntimeError(f"slot {slot} holds {self.slot_len[slot]} positions, prefill starts at {start}")
        ids = np.asarray([seq.all_ids[start:end]], np.int64)
        logits = self._run(self._binding(slot, 1), ids, np.ones((1, end), np.int64))
        self.slot_len[slot] = end
        return logits[0, -1].copy()

    def _prefill_rows(self, chunks: list[tuple[Sequence, int, int]]) -> list[np.ndarray]:
        """First chunks of sequences in consecutive slots as one right-padded call; the
        logits (V,) of each one's last token. Padding positions write keys/values past each
        row's length, which its later tokens overwrite (and attention never reads)."""
        first = self.pool.slot(chunks[0][0].request_id)
        lengths = np.asarray([end for _, _, end in chunks], np.int64)
        if any(start != 0 for _, start, _ in chunks) or (self.slot_len[first:first + len(chunks)] != 0).any():
            raise RuntimeError("a batched prefill takes the first chunks of sequences in empty slots")
        ids = np.zeros((len(chunks), int(lengths.max())), np.int64)
        for row, (seq, _, end) in enumerate(chunks):
            ids[row, :end] = seq.all_ids[:end]
        mask = row_mask(lengths, ids.shape[1])
        logits = self._run(self._binding(first, len(chunks)), ids, mask, lengths - 1)
        self.slot_len[first:first + len(chunks)] = lengths
        return [logits[row, -1].copy() for row in range(len(chunks))]

    def prefill_chunks(self, chunks: list[tuple[Sequence, int, int]]) -> list[np.ndarray]:
        """Every prefill chunk of an iteration, grouped by `prefill_groups` where the engine
        allows it; the last logits (V,) of each chunk, in order."""
        if not self.batched_prefill or len(chunks) < 2:
            return [self.prefill(seq, start, end) for seq, start, end in chunks]
        keys = [(self.pool.slot(seq.request_id), start, end - start) for seq, start, end in chunks]
        logits: list[np.ndarray | None] = [None] * len(chunks)
        for group in prefill_groups(keys):
            if len(group) == 1:
                logits[group[0]] = self.prefill(*chunks[group[0]])
                continue
            for i, row in zip(group, self._prefill_rows([chunks[i] for i in group])):
                logits[i] = row
        return logits

    def compact(self, seqs: list[Sequence] = ()) -> None:
        """Move the highest busy slots into lower free ones, so a decode batch covers no idle
        rows (CPU: each copy moves only the positions written, a few MB; on CUDA the idle
        rows stay in the batch). With prefix caching the old row stays a cache entry of what
        it holds (`seqs`: the sequences decoding now, whose tokens say what that is)."""
        if not self._arrays:
            return
        tokens = {s.request_id: s.all_ids for s in seqs} if self.pool.prefix_caching else {}
        while (free := self.pool.lowest_free()) is not None:
            seq_id, slot = self.pool.highest_held() or ("", -1)
            if slot < free:
                return
            n = int(self.slot_len[slot])
            for array in self._arrays:
                array[free, :, :n] = array[slot, :, :n]
            self.slot_len[free] = n
            if self.pool.prefix_caching:
                self.pool.move(seq_id, free, tokens.get(seq_id), n)
            else:
                self.slot_len[slot] = 0
                self.pool.move(seq_id, free)
            self.moves += 1

    def decode(self, seqs: list[Sequence]) -> np.ndarray:
        """One token for each sequence (its last), batched over slots [0, max slot]; (n, V) logits.

        On CPU they may be a view of the executor's logits buffer (no copy of a vocabulary-wide
        row per sequence per step): valid until the next step; copy them to keep them longer."""
        self.compact()
        # plain Python where it will do: right after a step the caches hold weights, and every
        # numpy call path touched then is slow (runtime.host_io)
        slots = [self.pool.slot(s.request_id) for s in seqs]
        rows = max(slots) + 1
        tokens = [0] * rows  # placeholder rows write at their next free position
        for seq, slot in zip(seqs, slots):
            if self.slot_len[slot] != seq.num_tokens - 1:
                raise RuntimeError(f"slot {slot} holds {self.slot_len[slot]} positions, "
                                   f"decode expects {seq.num_tokens - 1}")
            tokens[slot] = seq.last_token
        lengths = self.slot_len[:rows] + 1
        if self._host is not None:  # CPU: the mask as wide as the cache, bound once (runtime.host_io)
            logits = self._host.decode(self.session.session, self._binding(0, rows), tokens, lengths)
        else:
            mask = row_mask(lengths)
            logits = self._run(self._binding(0, rows), np.asarray(tokens, np.int64)[:, None], mask)
        in_order = rows == len(seqs) and slots == list(range(rows))
        if in_order:
            self.slot_len[:rows] = lengths
            return logits[:, -1]  # a view
        for slot in slots:
            self.slot_len[slot] += 1
        return logits[slots, -1]

    def step(self, prefill: list[tuple[Sequence, int, int]], decode: list[Sequence]
             ) -> tuple[list[np.ndarray], np.ndarray | None]:
        """An iteration: its prefill chunks (batched where they can be), then one decode step."""
        return self.prefill_chunks(prefill), (self.decode(decode) if decode else None)

    # -- speculative decoding (runtime.speculative) -----------------------------------------
    def enable_speculation(self, num_tokens: int) -> str | None:
        """Make room for verification steps of up to `num_tokens` drafts per sequence."""
        if self._host is not None:
            self._host = HostStepIO(self.session.session, self.pool.num_slots, self.capacity, num_tokens + 1)
        return None

    def verify(self, seqs: list[Sequence], drafts: list[list[int]]) -> list[np.ndarray]:
        """Each sequence's last token and its drafted tokens, run like a prefill chunk from its
        row's end: the logits (1 + k, V) of every one of those positions, per sequence. The
        rows then count all of them as written; `rollback` takes the rejected ones back.

        On CachedAttention engines all of them run as one call (`_verify_rows`). Elsewhere
        sequences with drafts run one call each (onnxruntime's GroupQueryAttention takes more
        than one new token per row only at batch 1); those without run as one decode step."""
        if self.kv.attention == "CachedAttention" and len(seqs) > 1:
            self.compact()
            if self._room_for(seqs, 1 + max(len(d) for d in drafts)):
                return self._verify_rows(seqs, drafts)
        out: list[np.ndarray | None] = [None] * len(seqs)
        plain = [i for i, draft in enumerate(drafts) if not draft]
        if plain:
            for i, row in zip(plain, self.decode([seqs[i] for i in plain])):
                out[i] = row[None].copy()
        for i, (seq, draft) in enumerate(zip(seqs, drafts)):
            if draft:
                out[i] = self._verify_row(seq, draft)
        return out

    def _room_for(self, seqs: list[Sequence], width: int) -> bool:
        """Whether every row of the sequences' batch (slots [0, max slot]) has room for `width`
        more positions (CachedAttention takes several rows of several new tokens each, where
        GroupQueryAttention takes them only at batch 1)."""
        rows = max(self.pool.slot(s.request_id) for s in seqs) + 1
        return bool((self.slot_len[:rows] + width <= self.capacity).all())

    def _verify_rows(self, seqs: list[Sequence], drafts: list[list[int]]) -> list[np.ndarray]:
        """Every sequence's last token and drafts as one call over slots [0, max slot], each
        row padded to the longest draft: a row's padding and idle rows write positions past
        its length, which its next tokens overwrite (as decode's placeholder rows do), and
        CachedAttention reads each row from its own past (its length: mask width - tokens)."""
        slots = [self.pool.slot(s.request_id) for s in seqs]
        rows, width = max(slots) + 1, 1 + max(len(d) for d in drafts)
        ids = np.zeros((rows, width), np.int64)
        for seq, slot, draft in zip(seqs, slots, drafts):
            self._expect_verifiable(seq, slot)
            ids[slot, :1 + len(draft)] = [seq.last_token, *draft]
        lengths = self.slot_len[:rows] + width
        mask = row_mask(lengths)
        positions = np.tile(np.arange(width, dtype=np.int64), (rows, 1))
        logits = self._run(self._binding(0, rows), ids, mask, positions)
        out = []
        for slot, draft in zip(slots, drafts):
            out.append(logits[slot, :1 + len(draft)].copy())
            self.slot_len[slot] += 1 + len(draft)
        return out

    def _expect_verifiable(self, seq: Sequence, slot: int) -> None:
        """The sequence's row holds every token but its last (which verification feeds)."""
        if self.slot_len[slot] != seq.num_tokens - 1:
            raise RuntimeError(f"slot {slot} holds {self.slot_len[slot]} positions, "
                               f"verification expects {seq.num_tokens - 1}")

    def _verify_row(self, seq: Sequence, draft: list[int]) -> np.ndarray:
        slot = self.pool.slot(seq.request_id)
        self._expect_verifiable(seq, slot)
        ids = np.asarray([[seq.last_token, *draft]], np.int64)
        mask = np.ones((1, int(self.slot_len[slot]) + ids.shape[1]), np.int64)
        positions = np.arange(ids.shape[1], dtype=np.int64)[None]
        logits = self._run(self._binding(slot, 1), ids, mask, positions)[0].copy()
        self.slot_len[slot] += ids.shape[1]
        return logits

    def cached_length(self, seq: Sequence) -> int:
        """Positions of the sequence written in its row."""
        return int(self.slot_len[self.pool.slot(seq.request_id)])

    def rollback(self, seq: Sequence, length: int) -> None:
        """Keep the first `length` positions of the sequence's row (rejected drafts dropped)."""
        slot = self.pool.slot(seq.request_id)
        if not 0 <= length <= self.slot_len[slot]:
            raise RuntimeError(f"slot {slot} holds {self.slot_len[slot]} positions, cannot keep {length}")
        self.slot_len[slot] = length

    def release(self, seq: Sequence) -> None:
        """Called while the sequence still holds its slot (kept as written with prefix caching:
        the row becomes a cache entry)."""
        if not self.pool.prefix_caching:
            self.slot_len[self.pool.slot(seq.request_id)] = 0


class ConcatExecutor:
    """Any engine: each sequence's past is its own arrays, grown by concatenation; batch 1."""

    def __init__(self, session: DecoderSession, slots: int, capacity: int) -> None:
        self.session = session
        self.pool = SlotPool(slots, capacity)
        self.max_sequences = slots
        self._caches: dict[str, list[np.ndarray]] = {}

    def _step(self, seq: Sequence, start: int, end: int) -> np.ndarray:
        cache = self._caches.get(seq.request_id) if start > 0 else None
        if cache is None:
            if start != 0:
                raise RuntimeError(f"sequence {seq.request_id} has no cache to continue from position {start}")
            cache = self.session.empty_cache(1)
        ids = np.asarray([seq.all_ids[start:end]], np.int64)
        logits, self._caches[seq.request_id] = self.session.forward(
            ids, np.ones((1, end), np.int64), np.arange(start, end)[None], cache, logits_from=end - start - 1)
        return logits[0, -1]

    def prefill(self, seq: Sequence, start: int, end: int) -> np.ndarray:
        return self._step(seq, start, end)

    def decode(self, seqs: list[Sequence]) -> np.ndarray:
        return np.stack([self._step(s, s.num_tokens - 1, s.num_tokens) for s in seqs])

    step = step_each

    def enable_speculation(self, num_tokens: int) -> str | None:
        return None

    def verify(self, seqs: list[Sequence], drafts: list[list[int]]) -> list[np.ndarray]:
        """Every position's logits (1 + k, V) of each sequence's last token and drafts (see
        StaticExecutor.verify), one sequence at a time."""
        out = []
        for seq, draft in zip(seqs, drafts):
            start = seq.num_tokens - 1
            ids = np.asarray([[seq.last_token, *draft]], np.int64)
            end = start + ids.shape[1]
            logits, self._caches[seq.request_id] = self.session.forward(
                ids, np.ones((1, end), np.int64), np.arange(start, end)[None], self._caches[seq.request_id])
            out.append(logits[0])
        return out

    def cached_length(self, seq: Sequence) -> int:
        cache = self._caches.get(seq.request_id)
        return int(cache[0].shape[2]) if cache else 0

    def rollback(self, seq: Sequence, length: int) -> None:
        if length == 0:
            self._caches.pop(seq.request_id, None)
        elif seq.request_id in self._caches:
            self._caches[seq.request_id] = [c[:, :, :length] for c in self._caches[seq.request_id]]

    def release(self, seq: Sequence) -> None:
        self._caches.pop(seq.request_id, None)

    def enable_prefix_caching(self) -> str | None:
        return "unfused (concat-layout) engines keep each sequence's cache in arrays of its own"


def probe_logits(session: DecoderSession, ids: list[int], prefill: int) -> np.ndarray:
    """Every position's logits (N, V) of one sequence through the engine: a prefill of its
    first `prefill` tokens, then one decode step per remaining token (build verification and
    perplexity). Paged engines through their block pool, others with concatenation."""
    if session.kv.layout == "paged":
        return sequence_logits(session, ids, prefill)
    logits, cache = session.forward(np.asarray([ids[:prefill]]), np.ones((1, prefill)),
                                    np.arange(prefill)[None], session.empty_cache(1))
    steps = [logits[0]]
    for pos in range(prefill, len(ids)):
        logits, cache = session.forward(np.asarray([[ids[pos]]]), np.ones((1, pos + 1)),
                                        np.asarray([[pos]]), cache)
        steps.append(logits[0])
    return np.concatenate(steps)


def window_logits(session: DecoderSession, windows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Every position's logits (B, L, V) of B token windows, each scored from an empty cache
    (perplexity): one prefill run for the batch, written into `out` where given (see
    DecoderSession.prefill_logits); paged engines window by window through their block pool."""
    if session.kv.layout != "paged":
        return session.prefill_logits(windows, out)
    rows = [probe_logits(session, w.tolist(), len(w)) for w in windows]
    if out is None:
        return np.stack(rows)
    for r, logits in enumerate(rows):
        out[r] = logits
    return out


def make_executor(session: DecoderSession, slots: int | None = None, capacity: int | None = None,
                  gpu_memory_fraction: float | None = None, prefill_budget: int | None = None):
    """The executor for the engine's layout, sized by the manifest unless overridden.

    `slots=1` with a request's own capacity gives the single-request path: in place for any
    engine whose attention is GroupQueryAttention, whatever layout its manifest records (a
    paged engine gets a pool of just that size). `gpu_memory_fraction` (paged engines): the
    block pool takes what that share of the GPU's memory leaves after the engine and its
    largest step (a packed step of `prefill_budget` prompt tokens; runtime.gpu_memory), instead
    of the manifest's number of blocks."""
    kv = session.kv
    limit = kv.max_sequence_length
    if capacity is not None and limit is not None and capacity > limit:
        raise EngineError(f"{capacity} tokens exceed the engine's maximum sequence length {limit}",
                          hint="shorten the prompt or max_new_tokens, or rebuild with a larger --max-seq-len")
    if gpu_memory_fraction is not None and kv.layout != "paged":
        raise EngineError(f"--gpu-memory-fraction sizes a paged KV cache; this engine's layout is {kv.layout!r}, "
                          "whose cache the manifest sizes", hint="rebuild with --kv-layout paged, or leave the "
                          "option out (--max-batch chooses how many of the engine's slots run)")
    if kv.layout == "paged":
        # sized from memory: a pool of one block a sequence until the profile step has run (the
        # manifest's pool may not fit the device: 512 sequences of 2,304 positions at 8B are 147 GB)
        executor = _paged_executor(session, slots, capacity, min_pool=gpu_memory_fraction is not None)
        if gpu_memory_fraction is not None:
            executor.size_from_memory(gpu_memory_fraction, prefill_budget)
        return executor
    capacity = capacity or kv.slot_capacity or limit or DEFAULT_CONCAT_CAPACITY
    slots = slots or kv.slots or DEFAULT_CONCAT_SLOTS
    if kv.attention in IN_PLACE_ATTENTION:
        # imported here: the graph executor builds on StaticExecutor, defined above
        from runtime.graph_executor import GraphStaticExecutor, unsupported_reason

        reason = unsupported_reason(session) if session.cuda_graph else "off"
        if reason is None:
            return GraphStaticExecutor(session, slots, capacity)
        _say_no_graph(session, reason)
        return StaticExecutor(session, slots, capacity)
    _say_no_graph(session, "engines with unfused attention (concat layout) decode without CUDA graphs")
    return ConcatExecutor(session, slots, capacity)


def _say_no_graph(session: DecoderSession, reason: str) -> None:
    """Tell once per session why decode steps are not captured, where capture was asked for."""
    if session.cuda_graph and not session.said_no_graph:
        session.said_no_graph = True
        print(f"note: CUDA graphs are not used for this engine's decode steps: {reason}", file=sys.stderr)


def _paged_executor(session: DecoderSession, slots: int | None, capacity: int | None,
                    min_pool: bool = False) -> PagedExecutor:
    """The manifest's pool, or one of `slots` x `capacity` positions where they are given, or
    (`min_pool`) one block a sequence, for a pool that GPU memory sizes next; decode steps
    captured in CUDA graphs where the session allows it."""
    from runtime.paged_graphs import GraphPagedExecutor, unsupported_reason

    kv = session.kv
    slots = slots or kv.slots or 1
    if min_pool:
        blocks = slots
    else:
        blocks = kv.num_blocks if capacity is None else slots * -(-capacity // kv.block_size)
    reason = unsupported_reason(session) if session.cuda_graph else "off"
    if reason is None:
        return GraphPagedExecutor(session, slots, blocks, kv.block_size)
    _say_no_graph(session, reason)
    return PagedExecutor(session, slots, blocks, kv.block_size)
