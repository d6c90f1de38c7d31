"""The paged KV-cache layout: one pool of blocks per layer and K/V, shared through block tables.

An engine built with `--kv-layout paged` computes attention with onnxruntime's
PagedAttention, a CUDA-only kernel. A step feeds the new tokens of its sequences packed into
one row, with no padding:

    input_ids                   (1, T)  int64   every sequence's new tokens, one after another
    cumulative_sequence_length  (B+1,)  int32   where each sequence's tokens start in that row
    past_seqlens                (B,)    int32   positions already in each sequence's blocks
    block_table                 (B, W)  int32   each sequence's blocks in order (padded with 0)
    attention_metadata          (2,)    int32   host-side upper bounds [new tokens of one
                                                sequence, past + new of one sequence], so the
                                                kernel need not copy the lengths back from the
                                                GPU in every layer
    logits_indices              (N,)    int64   (slice-logits) the rows whose logits are
                                                computed: each sequence's last token

The kernel writes each new key/value into its sequence's blocks in place: every layer's K and
V pool is one device buffer, bound as both `key_cache` input and present output. Rotary
positions come from `past_seqlens`, so a chunk continues where its sequence stopped.

`PagedExecutor` is the scheduler's executor for such engines (`runtime.kv_cache.BlockPool`
keeps the accounting: a sequence takes blocks as it grows, and the scheduler preempts when
none is free; with prefix caching, `runtime.cached_pools.CachingBlockPool` also shares the
cached blocks of a prompt's prefix by reference, so a step simply starts past them). Its `step` runs a whole iteration, the prefill chunks and every decode, as one
packed call. `sequence_logits` gives every position's logits of one sequence, for build
verification and perplexity.
"""

from __future__ import annotations

from typing import Sequence as Seq

import numpy as np

from optimizer.core.errors import EngineError
from runtime.cached_pools import CachingBlockPool
from runtime.gpu_memory import DeviceBuffer, blocks_for_fraction, device_memory
from runtime.kv_cache import BlockPool
from runtime.sequence import Sequence
from runtime.session import CUDA_PREFILL_BUDGET, DecoderSession, check_layout_provider, kv_bind_type, kv_dtype

LOGITS_INDICES = "logits_indices"  # the paged graph's input (passes/kv_layout.py)
GREEDY_TOKENS = "greedy_tokens"  # the engine's argmax of each logits row (passes/greedy_tokens.py)
Chunk = tuple[Seq[int], int, Seq[int]]  # (new token ids, positions already cached, block table)


def pack_step(chunks: Seq[Chunk], block_size: int) -> dict[str, np.ndarray]:
    """The packed step inputs of `chunks`, in order (pure: no session, no device).

    Each chunk's table must cover its past and new positions."""
    if not chunks:
        raise ValueError("a paged step needs at least one sequence")
    lengths, past = [], []
    for i, (ids, start, table) in enumerate(chunks):
        if not ids:
            raise ValueError(f"chunk {i} has no new tokens")
        if start + len(ids) > len(table) * block_size:
            raise ValueError(f"chunk {i}: {start} + {len(ids)} positions overflow its {len(table)} blocks "
                             f"of {block_size}")
        lengths.append(len(ids))
        past.append(start)
    width = max(len(t) for _, _, t in chunks)
    table = np.zeros((len(chunks), width), np.int32)
    for row, (_, _, blocks) in enumerate(chunks):
        table[row, :len(blocks)] = blocks
    totals = np.asarray(past) + np.asarray(lengths)
    return {
        "input_ids": np.concatenate([np.asarray(ids, np.int64) for ids, _, _ in chunks])[None],
        "cumulative_sequence_length": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
        "past_seqlens": np.asarray(past, np.int32),
        "block_table": table,
        "attention_metadata": np.asarray([max(lengths), int(totals.max())], np.int32),
    }


def last_rows(chunks: Seq[Chunk]) -> np.ndarray:
    """Each chunk's last row in the packed step (where its next-token logits are)."""
    return np.cumsum([len(ids) for ids, _, _ in chunks]) - 1


def profile_chunks(tokens: int, max_length: int | None, sequences: int, block_size: int) -> list[Chunk]:
    """The largest step a pool must leave room for: `tokens` prompt tokens as sequences of at
    most `max_length`, and one decode token of each of `sequences`, each on blocks of its own."""
    per = min(tokens, max_length or tokens)
    lengths = [per] * (tokens // per) + ([tokens % per] if tokens % per else []) + [1] * sequences
    chunks, first = [], 0
    for n in lengths:
        table = list(range(first, first + -(-n // block_size)))
        chunks.append((list(range(n)), 0, table))
        first += len(table)
    return chunks


class PagedExecutor:
    """The executor of paged engines: `num_blocks` blocks of `block_size` positions per layer
    and K/V on the GPU, `max_sequences` sequences running together.

    Engines with the greedy-tokens pass choose greedy rows' tokens on the device
    (`samples_on_device`: the engine loop takes ids from `step_tokens`); only rows that sample,
    or hold EOS back for min_tokens, bring the step's logits to the host."""

    def __init__(self, session: DecoderSession, max_sequences: int, num_blocks: int, block_size: int) -> None:
        kv = session.kv
        check_layout_provider(kv, session.provider)
        self.session, self.kv = session, kv
        self.block_size = block_size
        self.max_sequences = max_sequences
        self._inputs = {i.name for i in session.session.get_inputs()}
        self.samples_on_device = GREEDY_TOKENS in {o.name for o in session.session.get_outputs()}
        self.prefill_budget = CUDA_PREFILL_BUDGET  # prompt tokens per packed step
        self._dtype = kv_dtype(kv.dtype)  # fp16, or fp8 (float8 E4M3 codes, one scale per layer and K/V)
        self._bind_type = kv_bind_type(kv.dtype)
        self._allocate(num_blocks)

    @property
    def bytes_per_block(self) -> int:
        """Device bytes one block takes over every layer's K and V."""
        kv = self.kv
        return 2 * kv.num_layers * self.block_size * kv.num_kv_heads * kv.head_dim * np.dtype(self._dtype).itemsize

    def _allocate(self, num_blocks: int) -> None:
        """The pool's device buffers (zeroed, outside onnxruntime's arena) and their binding.

        Each buffer has one block more than the pool hands out: block `num_blocks`, the scratch
        block, which the placeholder rows of a captured decode step write to
        (runtime.paged_graphs)."""
        kv = self.kv
        self._binding = self._buffers = None  # the old pool's memory goes before the new one is taken
        per_sequence = -(-kv.max_sequence_length // self.block_size) if kv.max_sequence_length else None
        self.pool = BlockPool(num_blocks, self.block_size, per_sequence)
        self.scratch_block = num_blocks
        shape = (num_blocks + 1, self.block_size, kv.num_kv_heads, kv.head_dim)
        nbytes = int(np.prod(shape)) * np.dtype(self._dtype).itemsize
        binding = self.session.session.io_binding()
        binding.bind_output("logits", "cuda")  # first: get_outputs()[0] is the logits
        if self.samples_on_device:
            binding.bind_output(GREEDY_TOKENS, "cuda")  # second: get_outputs()[1]
        buffers, self.cache_bindings = [], []  # buffers keep the device memory alive
        for i in range(kv.num_layers):
            for past, present in ((kv.past_key, kv.present_key), (kv.past_value, kv.present_value)):
                buffer = DeviceBuffer(nbytes)
                self.cache_bindings.append((past.format(i=i), present.format(i=i), buffer.address))
                buffers.append(buffer)
        self.cache_shape = shape
        self.bind_cache(binding)
        self._binding, self._buffers = binding, buffers

    def bind_cache(self, binding) -> None:
        """Bind every layer's K and V pool as both its past input and its present output."""
        for past, present, address in self.cache_bindings:
            binding.bind_input(past, "cuda", 0, self._bind_type, self.cache_shape, address)
            binding.bind_output(present, "cuda", 0, self._bind_type, self.cache_shape, address)

    def size_from_memory(self, fraction: float, profile_tokens: int | None = None) -> int:
        """Resize the pool to what `fraction` of the device leaves after the largest step (one
        packed step of `profile_tokens` prompt tokens, default the prefill budget, as sequences
        of at most the engine's length, plus one decode token of each of `max_sequences`, run
        once so that onnxruntime's arena holds its activations); returns the number of blocks."""
        if self.pool.used:
            raise RuntimeError("the pool can be resized only while no sequence holds blocks")
        tokens = max(1, profile_tokens or self.prefill_budget)
        chunks = profile_chunks(tokens, self.kv.max_sequence_length, self.max_sequences, self.block_size)
        needed = sum(len(table) for _, _, table in chunks)
        if self.pool.num_blocks < needed:
            self._allocate(needed)
        self._run(chunks, list(last_rows(chunks)))
        free, total = device_memory()
        num_blocks = self.pool.num_blocks + blocks_for_fraction(free, total, fraction, self.bytes_per_block)
        if num_blocks * self.block_size < len(chunks[0][0]):
            raise EngineError(f"--gpu-memory-fraction {fraction} leaves room for {num_blocks} blocks of "
                              f"{self.block_size} tokens ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free "
                              "after loading the engine)", hint="raise the fraction, or lower the prefill budget")
        self._allocate(num_blocks)
        self.prefill_budget = tokens
        self.memory = dict(fraction=fraction, free_gib=round(free / 2**30, 2), total_gib=round(total / 2**30, 2),
                           num_blocks=num_blocks, kv_gib=round(num_blocks * self.bytes_per_block / 2**30, 2),
                           profile_tokens=tokens)
        return num_blocks

    def enable_prefix_caching(self) -> str | None:
        """Share cached prompt blocks by reference (runtime.cached_pools.CachingBlockPool)."""
        pool = self.pool
        self.pool = CachingBlockPool(pool.num_blocks, pool.block_size, pool.max_blocks_per_sequence)
        return None

    def _launch(self, chunks: Seq[Chunk], rows: Seq[int]) -> None:
        """Run one packed step; its outputs stay on the device (`self._binding.get_outputs()`)."""
        feeds = pack_step(chunks, self.block_size)
        if LOGITS_INDICES in self._inputs:
            feeds[LOGITS_INDICES] = np.asarray(rows, np.int64)
        for name, array in feeds.items():
            if name in self._inputs:
                self._binding.bind_cpu_input(name, array)
        self._binding.bind_output("logits", "cuda")  # a fresh logits tensor each step (kept in place:
        if self.samples_on_device:                    # rebinding a name keeps its position)
            self._binding.bind_output(GREEDY_TOKENS, "cuda")
        self.session.session.run_with_iobinding(self._binding, self.session.eager_run)

    def _launch_step(self, prefill: Seq[tuple[Sequence, int, int]], decode: Seq[Sequence]) -> list:
        """Run an iteration's chunks and decodes as one packed step, every chunk's last row
        computed (with logits_indices); its outputs (logits, then greedy tokens where the engine
        has them), on the device."""
        chunks = self._chunks(prefill, decode)
        self._launch(chunks, last_rows(chunks))
        return self._binding.get_outputs()

    def _run(self, chunks: Seq[Chunk], rows: Seq[int]) -> np.ndarray:
        """Run one packed step; the logits (len(rows), V) of those rows of the packed tokens."""
        self._launch(chunks, rows)
        logits = self._binding.get_outputs()[0].numpy()[0]
        return logits if LOGITS_INDICES in self._inputs else logits[list(rows)]

    def _chunks(self, prefill: Seq[tuple[Sequence, int, int]], decode: Seq[Sequence]) -> list[Chunk]:
        chunks = [(seq.all_ids[start:end], start, self.pool.table(seq.request_id)) for seq, start, end in prefill]
        return chunks + [([s.last_token], s.num_tokens - 1, self.pool.table(s.request_id)) for s in decode]

    def step(self, prefill: Seq[tuple[Sequence, int, int]],
             decode: Seq[Sequence]) -> tuple[list[np.ndarray], np.ndarray | None]:
        """One iteration in one call: prefill chunks (seq, start, end) and one token for each
        decoding sequence. Returns each chunk's last-token logits (V,) and the decodes' (n, V)."""
        chunks = self._chunks(prefill, decode)
        if not chunks:
            return [], None
        logits = self._run(chunks, last_rows(chunks))
        return list(logits[:len(prefill)]), (logits[len(prefill):] if decode else None)

    def step_tokens(self, prefill: Seq[tuple[Sequence, int, int]], decode: Seq[Sequence]
                    ) -> tuple[list, list[int] | None]:
        """One iteration in one call, tokens chosen on the device where the rows are greedy.

        Returns, for each prefill chunk, its next token id (greedy, chosen on the device) or its
        last logits (V,) for the host to choose from, and a token id for each decoding sequence
        (rows that sample are chosen here from the logits, with each sequence's own generator).
        Only the chunks' token ids cross to the host unless a row samples."""
        if not prefill and not decode:
            return [], None
        outputs = self._launch_step(prefill, decode)
        seqs = [seq for seq, _, _ in prefill] + list(decode)
        host = [i for i, seq in enumerate(seqs) if not seq.greedy_on_device()]
        tokens = outputs[1].numpy().reshape(-1).tolist()  # the engine's argmax of every row
        logits = outputs[0].numpy()[0] if host else None
        rows: list = list(tokens)
        for i in host:
            rows[i] = logits[i] if i < len(prefill) else seqs[i].choose(logits[i])
        return rows[:len(prefill)], (rows[len(prefill):] if decode else None)

    def decode_tokens(self, seqs: Seq[Sequence]) -> list[int]:
        """The next token of each sequence (one packed step; see `step_tokens`)."""
        return self.step_tokens([], seqs)[1]

    @property
    def capacity(self) -> int:
        """Positions one sequence may hold."""
        return self.pool.max_tokens()

    def prefill(self, seq: Sequence, start: int, end: int) -> np.ndarray:
        """Compute tokens [start, end) of the sequence into its blocks; logits (V,) of the last."""
        return self.step([(seq, start, end)], [])[0][0]

    def decode(self, seqs: list[Sequence]) -> np.ndarray:
        """One token for each sequence (its last), packed into one call; (n, V) logits."""
        return self.step([], seqs)[1]

    def release(self, seq: Sequence) -> None:
        """Nothing to clear: the pool takes the blocks back, and a block's next owner
        overwrites every position it reads."""

    def sequence_logits(self, ids: Seq[int], prefill: int) -> np.ndarray:
        """Every position's logits (N, V) of one sequence: a prefill of its first `prefill`
        tokens, then one decode step per remaining token (its blocks are freed after)."""
        key = "__sequence_logits__"
        if not self.pool.admit(key, len(ids)):
            raise EngineError(f"{len(ids)} tokens do not fit this executor's {self.pool.num_blocks} blocks "
                              f"of {self.block_size}")
        try:
            table = self.pool.table(key)
            rows = [self._run([(list(ids[:prefill]), 0, table)], range(prefill))]
            rows += [self._run([([ids[pos]], pos, table)], [0]) for pos in range(prefill, len(ids))]
        finally:
            self.pool.release(key)
        return np.concatenate(rows)


def sequence_logits(session: DecoderSession, ids: Seq[int], prefill: int | None = None) -> np.ndarray:
    """Logits (N, V) of every position of `ids` through a paged engine (a pool just large enough)."""
    block = session.kv.block_size
    executor = PagedExecutor(session, 1, -(-len(ids) // block), block)
    return executor.sequence_logits(ids, len(ids) if prefill is None else prefill)
