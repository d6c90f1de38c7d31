"""Decode steps of paged engines as replays of captured CUDA graphs.

A paged step packs every sequence's new tokens into one call with host-side inputs whose
shapes change from step to step, so onnxruntime runs it eagerly: hundreds of kernel
launches, and the feeds copied from host memory each time. A decode-only step, one token per
sequence, has fixed shapes once its rows are padded to a batch bucket (1, 2, 4, ... up to
the executor's sequences), so `GraphPagedExecutor` gives every bucket b fixed device buffers:

    input_ids                   (1, b)  int64   each row's last token
    cumulative_sequence_length  (b+1,)  int32   0, 1, ..., b (one token a row; set once)
    past_seqlens                (b,)    int32   positions already in each row's blocks
    block_table                 (b, W)  int32   each row's blocks; W = the blocks of one
                                                sequence of the engine's maximum length
    attention_metadata          (2,)    int32   host memory, constant: [1, W * block size],
                                                bounds that hold for every replay
    logits_indices              (b,)    int64   0, 1, ..., b (set once)
    logits / greedy_tokens      (1, b, V) / (1, b)  the outputs, read in place

onnxruntime captures each bucket's step on its first runs under a graph id of its own and
replays it afterwards. The host's part of a step is three small copies (ids, lengths, block
table), the replay, and the copy of b token ids back: the engine's argmax where every row is
greedy, else the device sampler's replay on the logits buffer (`runtime.decode_choice`: rows
that need penalties, logprobs, structured output or min_tokens are chosen on the host from
the logits). Steps with prefill chunks stay eager and packed (`PagedExecutor._launch`); their
rows' tokens are chosen the same way, the sampler reading the step's own logits output in place
(`DeviceSampler.run_on`).

Rows b' < b of a bucket beyond the real sequences are placeholders: token 0 at position 0 of
a table that names only the scratch block (`PagedExecutor.scratch_block`, one block past the
pool's), so their key/value writes land where no sequence reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence as Seq

import numpy as np
import onnxruntime as ort

from optimizer.core.engine_format import flash_paged_block
from optimizer.core.errors import EngineError
from runtime.decode_choice import choose_packed, choose_tokens
from runtime.device_sampler import DeviceSampler, RowParams
from runtime.sampler_spec import DEFAULT_CANDIDATES
from runtime.graph_executor import batch_buckets, bucket_for
from runtime.multi_step import DeviceRounds, past_rows
from runtime.paged import GREEDY_TOKENS, LOGITS_INDICES, PagedExecutor
from runtime.sequence import Sequence
from runtime.session import DecoderSession

PAGED_GRAPH_INPUTS = ("input_ids", "cumulative_sequence_length", "past_seqlens", "block_table",
                      "attention_metadata")


def split_mixed_steps(head_dim: int, block_size: int, choice: str | None = None) -> bool:
    """Whether a step with prefill chunks runs them alone, its decodes in their bucket's graph
    (two calls), rather than everything packed in one eager call.

    Where flash cannot read the blocks in place (block size not a multiple of
    `flash_paged_block`), onnxruntime runs every step that is not decode-only by first gathering
    each of its sequences' whole context into a dense buffer expanded to all query heads, every
    layer, so a decode row packed with prefill chunks costs its whole context (session 35,
    2048/128 at 8B with blocks of 16: 699 out tok/s); a decode-only step uses paged decode
    kernels instead. `choice` (or OPTIMIZER_PAGED_SPLIT): "1" always, "0" never, "auto" (default)
    where flash cannot read the blocks."""
    choice = choice or os.environ.get("OPTIMIZER_PAGED_SPLIT", "auto")
    if choice not in ("0", "1", "auto"):
        raise EngineError(f"OPTIMIZER_PAGED_SPLIT={choice!r}", hint="use 0 (pack), 1 (split) or auto")
    if choice != "auto":
        return choice == "1"
    return block_size % flash_paged_block(head_dim) != 0


def unsupported_reason(session: DecoderSession) -> str | None:
    """Why this paged engine's decode steps cannot run as captured graphs (None: they can)."""
    inputs = {i.name for i in session.session.get_inputs()}
    missing = [name for name in PAGED_GRAPH_INPUTS if name not in inputs]
    if missing:
        return f"the engine lacks the paged inputs {missing} (rebuild it with this version)"
    if not session.kv.max_sequence_length:
        return "the engine records no maximum sequence length, so a block table's width is unbounded"
    logits = next((o for o in session.session.get_outputs() if o.name == "logits"), None)
    if logits is None or len(logits.shape) != 3 or not isinstance(logits.shape[-1], int):
        return "the engine's logits are not (1, rows, vocabulary) with a fixed vocabulary"
    return None


def pack_decode(last_tokens: Seq[int], past_lengths: Seq[int], tables: Seq[Seq[int]], size: int,
                ids: np.ndarray, past: np.ndarray, table: np.ndarray, scratch: int) -> None:
    """Write a decode step of len(last_tokens) rows, padded to `size` rows, into the host
    arrays `ids` (1, >= size), `past` (>= size,) and `table` (>= size, W) (pure: no device).

    Row r < n: its last token, the positions already cached, its blocks (the rest of the row
    the scratch block). Rows n..size-1: placeholders (token 0, nothing cached, only the scratch
    block), whose one key/value lands in the scratch block."""
    n = len(last_tokens)
    if n > size:
        raise ValueError(f"{n} rows do not fit a bucket of {size}")
    width = table.shape[1]
    ids[0, :n] = last_tokens
    past[:n] = past_lengths
    ids[0, n:size] = 0
    past[n:size] = 0
    table[:size] = scratch
    for row, blocks in enumerate(tables):
        if len(blocks) > width:
            raise ValueError(f"row {row} holds {len(blocks)} blocks, more than a table's {width}")
        table[row, :len(blocks)] = blocks


@dataclass
class _Bucket:
    binding: ort.IOBinding
    ids: ort.OrtValue
    past: ort.OrtValue
    table: ort.OrtValue
    logits: ort.OrtValue
    greedy: ort.OrtValue | None
    run_options: ort.RunOptions
    graph_id: int
    constants: list = field(default_factory=list)  # device buffers set once, kept alive here


class GraphPagedExecutor(PagedExecutor):
    """The paged executor whose decode-only steps replay one CUDA graph per batch bucket."""

    def __init__(self, session: DecoderSession, max_sequences: int, num_blocks: int, block_size: int,
                 candidates: int = DEFAULT_CANDIDATES) -> None:
        self.buckets = batch_buckets(max_sequences)
        logits = next(o for o in session.session.get_outputs() if o.name == "logits")
        self.vocab = int(logits.shape[-1])
        self._logits_dtype = np.float16 if logits.type == "tensor(float16)" else np.float32
        self.sampler = DeviceSampler(self.vocab, self._logits_dtype, "cuda", session.provider_options, candidates)
        self._params = RowParams.empty(self.buckets[-1])
        self.host_sampled = 0  # rows chosen on the host (penalties, min_tokens, wide top-k / top-p)
        self.split_steps = split_mixed_steps(session.kv.head_dim, block_size)
        self.rounds: DeviceRounds | None = None
        super().__init__(session, max_sequences, num_blocks, block_size)
        # decode steps per host round trip (runtime.multi_step): greedy rows, on the session's stream
        self.decode_steps = session.decode_steps if self.samples_on_device and session.stream is not None else 1
        if self.decode_steps > 1:
            self.rounds = DeviceRounds(session, session.stream, self.decode_steps)

    def _allocate(self, num_blocks: int) -> None:
        """A new pool: its buffers are new, so every bucket binds (and captures) afresh."""
        super()._allocate(num_blocks)
        self.width = self.pool.max_blocks_per_sequence
        rows = self.buckets[-1]
        self._ids = np.zeros((1, rows), np.int64)
        self._past = np.zeros(rows, np.int32)
        self._table = np.full((rows, self.width), self.scratch_block, np.int32)
        self._metadata = np.asarray([1, self.width * self.block_size], np.int32)
        self._steps: dict[int, _Bucket] = {}
        if self.rounds is not None:
            self.rounds.reset()

    def _bucket(self, size: int) -> _Bucket:
        step = self._steps.get(size)
        if step is not None:
            return step
        device = "cuda"
        binding = self.session.session.io_binding()

        def buffer(shape, dtype) -> ort.OrtValue:
            return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, device, 0)

        ids, past, table = buffer((1, size), np.int64), buffer((size,), np.int32), buffer((size, self.width), np.int32)
        cumulative = ort.OrtValue.ortvalue_from_numpy(np.arange(size + 1, dtype=np.int32), device, 0)
        binding.bind_ortvalue_input("input_ids", ids)
        binding.bind_ortvalue_input("cumulative_sequence_length", cumulative)
        binding.bind_ortvalue_input("past_seqlens", past)
        binding.bind_ortvalue_input("block_table", table)
        binding.bind_input("attention_metadata", "cpu", 0, np.int32, (2,), self._metadata.ctypes.data)
        constants = [cumulative]
        if LOGITS_INDICES in self._inputs:
            indices = ort.OrtValue.ortvalue_from_numpy(np.arange(size, dtype=np.int64), device, 0)
            binding.bind_ortvalue_input(LOGITS_INDICES, indices)
            constants.append(indices)
        logits = buffer((1, size, self.vocab), self._logits_dtype)
        binding.bind_ortvalue_output("logits", logits)
        greedy = None
        if self.samples_on_device:
            greedy = buffer((1, size), np.int64)
            binding.bind_ortvalue_output(GREEDY_TOKENS, greedy)
        self.bind_cache(binding)
        run, graph_id = ort.RunOptions(), self.session.new_graph_id()
        run.add_run_config_entry("gpu_graph_id", str(graph_id))
        step = _Bucket(binding, ids, past, table, logits, greedy, run, graph_id, constants)
        self.sampler.bind(size, logits)
        self._steps[size] = step
        return step

    def _pack(self, seqs: Seq[Sequence]) -> int:
        """Write the decode step of `seqs` into the host arrays, padded to the smallest bucket
        that holds them; that bucket's size."""
        size = bucket_for(len(seqs), self.buckets)
        pack_decode([s.last_token for s in seqs], [s.num_tokens - 1 for s in seqs],
                    [self.pool.table(s.request_id) for s in seqs], size,
                    self._ids, self._past, self._table, self.scratch_block)
        return size

    def _replay(self, seqs: Seq[Sequence]) -> tuple[_Bucket, int]:
        """Run (replay) the decode step of `seqs` in the smallest bucket that holds them; that
        bucket's buffers and size."""
        size = self._pack(seqs)
        return self._run_bucket(size), size

    def _run_bucket(self, size: int) -> _Bucket:
        step = self._bucket(size)
        step.ids.update_inplace(self._ids[:, :size])
        step.past.update_inplace(self._past[:size])
        step.table.update_inplace(self._table[:size])
        self.session.session.run_with_iobinding(step.binding, step.run_options)
        return step

    def step(self, prefill: Seq[tuple[Sequence, int, int]],
             decode: Seq[Sequence]) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Logits for the host to choose from, computed as `step_tokens` computes them (the same
        split of mixed steps), so both paths see the same numbers."""
        if decode and (not prefill or self.split_steps):
            chunk_rows = super().step(prefill, [])[0] if prefill else []
            return chunk_rows, self._replay(decode)[0].logits.numpy()[0, :len(decode)]
        return super().step(prefill, decode)

    def step_tokens(self, prefill: Seq[tuple[Sequence, int, int]], decode: Seq[Sequence]
                    ) -> tuple[list, list[int] | None]:
        """A decode-only step replays its bucket's graph; a step with prefill chunks runs them
        eagerly, packed with the decodes, or (`split_steps`) alone, the decodes then replaying
        their bucket's graph. Every row's token is chosen on the device where it can be (for an
        eager step the sampler reads its logits where onnxruntime wrote them): only ids cross to
        the host, unless a row needs the host (`runtime.decode_choice`). A chunk that does not
        end its prompt gets None (its logits are no next token)."""
        if not prefill:
            return ([], self._decode_tokens(decode)) if decode else ([], None)
        if decode and self.split_steps:
            return self.step_tokens(prefill, [])[0], self._decode_tokens(decode)
        if LOGITS_INDICES not in self._inputs:  # older engines compute every packed token's logits
            return super().step_tokens(prefill, decode)
        return self._packed_tokens(prefill, decode)

    def decode_rounds(self, seqs: Seq[Sequence], k: int) -> list[list[int]]:
        """k greedy tokens of each sequence from k decode steps queued at once (runtime.multi_step):
        the block tables stay for the round (they cover its positions), the past lengths advance."""
        if self.rounds is None:
            raise RuntimeError("multi-step decoding is off for this executor (decode_steps 1)")
        n, size = len(seqs), self._pack(seqs)
        step = self._bucket(size)
        tokens = self.rounds.run(size, step.binding, step.graph_id, step.ids.data_ptr(), step.greedy.data_ptr(),
                                 self._ids[0, :size], {"table": (step.table.data_ptr(), self._table[:size])},
                                 {"past": (step.past.data_ptr(), past_rows(self._past[:size], n, k))}, k)
        return tokens[:, :n].T.tolist()

    def _decode_tokens(self, decode: Seq[Sequence]) -> list[int]:
        step, size = self._replay(decode)
        greedy = None if step.greedy is None else (lambda: step.greedy.numpy()[0])
        tokens, on_host = choose_tokens(decode, np.arange(len(decode)), size, self._params,
                                        lambda p: self.sampler.run(size, size, p), greedy,
                                        lambda: step.logits.numpy()[0])
        self.host_sampled += on_host
        return tokens

    def _packed_tokens(self, prefill: Seq[tuple[Sequence, int, int]], decode: Seq[Sequence]
                       ) -> tuple[list[int | None], list[int] | None]:
        outputs = self._launch_step(prefill, decode)
        logits, rows = outputs[0], len(prefill) + len(decode)  # (1, rows, V): each chunk's last row
        greedy = (lambda: outputs[1].numpy().reshape(-1)) if self.samples_on_device else None
        params = self._params if rows <= len(self._params.temperature) else RowParams.empty(rows)
        chunk_tokens, tokens, on_host = choose_packed(
            prefill, decode, params, lambda p: self.sampler.run_on(logits, rows, p), greedy,
            lambda: logits.numpy()[0])
        self.host_sampled += on_host
        return chunk_tokens, (tokens if decode else None)

    def capture(self, runs: int = 3) -> None:
        """Run every bucket's decode step `runs` times, all rows placeholders (onnxruntime
        captures a graph after its first runs), so no request pays for a capture."""
        self._params.clear()
        for size in self.buckets:
            pack_decode([], [], [], size, self._ids, self._past, self._table, self.scratch_block)
            for _ in range(runs):
                self._run_bucket(size)
                self.sampler.run(size, size, self._params)
