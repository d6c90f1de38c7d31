"""Decode steps as replays of captured CUDA graphs, with tokens chosen on the device.

On CUDA a decode step of a small model is bound by the host: hundreds of kernel launches,
the inputs bound from host memory, a logits tensor allocated each step and copied to the host
with an argmax in numpy. `GraphStaticExecutor` (static layout, GroupQueryAttention engines)
instead gives every batch bucket (1, 2, 4, ... up to the slots) fixed device buffers:

    input_ids       (b, 1)          int64   each row's last token
    attention_mask  (b, capacity)   int64   ones over each row's positions after this step:
                                            a fixed width, so the graph's total length is
                                            the capacity and each row's length comes from
                                            the mask (GQA's seqlens_k, computed on the GPU)
    logits_positions (b, 1)         int64   zeros: each row's one position (set once)
    logits          (b, 1, V)       float   the engine's output, read in place by the sampler
    KV cache        rows [0, b) of the executor's (slots, n_kv, capacity, hd) buffers

onnxruntime captures each bucket's step on its first runs under a graph id of its own and
replays it afterwards; the runtime's part of a step is two small host-to-device copies (ids,
mask), the replay, the sampler's replay (`runtime.device_sampler`) and the copy of b token
ids back; when every row is greedy, the engine's own `greedy_tokens` output (the greedy-tokens
pass) replaces the sampler's replay. Prefill chunks stay uncaptured (graph id -1), batched
where the static executor can (`StaticExecutor.prefill_chunks`); `decode` (logits for host
sampling, e.g. evaluation) is the static executor's uncaptured step.

A decode of rows [0, r) runs in the smallest bucket b >= r; rows r..b-1 are placeholders that
write a key/value at their slot's next free position, which the slot's next real token (or
prefill chunk) overwrites, the same contract as the uncaptured static executor.

Rows the device cannot sample (min_tokens still holding back EOS, or a top-k / top-p cut wider
than the sampler's candidates) are sampled on the host from the logits, with the same uniform
number, so the result does not depend on which side sampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence as Seq

import numpy as np
import onnxruntime as ort

from optimizer.core.errors import EngineError
from runtime.decode_choice import choose_tokens
from runtime.device_sampler import DeviceSampler, RowParams
from runtime.sampler_spec import DEFAULT_CANDIDATES
from runtime.executors import StaticExecutor
from runtime.multi_step import DeviceRounds
from runtime.sequence import Sequence
from runtime.session import DecoderSession


def unsupported_reason(session: DecoderSession) -> str | None:
    """Why this engine's decode steps cannot run as captured graphs (None: they can)."""
    inputs = {i.name for i in session.session.get_inputs()}
    if "logits_positions" not in inputs and "logits_from" not in inputs:
        return "the engine predates the slice-logits pass (rebuild it with this version)"
    if "position_ids" in inputs:
        return "the engine predates the static KV-cache layout (rebuild it with this version)"
    return None


def batch_buckets(max_rows: int) -> tuple[int, ...]:
    """Batch sizes with a graph of their own: powers of two below `max_rows`, then `max_rows`."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    sizes, b = [], 1
    while b < max_rows:
        sizes.append(b)
        b *= 2
    return tuple(sizes + [max_rows])


def bucket_for(rows: int, buckets: Seq[int]) -> int:
    """The smallest bucket holding `rows` rows."""
    for b in buckets:
        if b >= rows:
            return b
    raise ValueError(f"{rows} rows exceed the largest bucket {buckets[-1]}")


def mask_rows(mask: np.ndarray, encoded: np.ndarray, lengths: np.ndarray) -> None:
    """Make row r of `mask` ones over [0, lengths[r]) and zeros after, touching only rows whose
    `encoded` length differs (then records the new lengths in `encoded`)."""
    rows = np.nonzero(encoded != lengths)[0]
    if not len(rows):
        return
    grow = rows[lengths[rows] == encoded[rows] + 1]  # the common case: one more position
    mask[grow, lengths[grow] - 1] = 1
    for r in np.setdiff1d(rows, grow, assume_unique=True):
        mask[r, :lengths[r]] = 1
        mask[r, lengths[r]:] = 0
    encoded[rows] = lengths[rows]


@dataclass
class _Bucket:
    binding: ort.IOBinding
    ids: ort.OrtValue
    mask: ort.OrtValue
    logits: ort.OrtValue
    run_options: ort.RunOptions
    positions: ort.OrtValue | None  # zeros (b, 1): each row's logits position
    greedy: ort.OrtValue | None  # (b, 1) int64: the engine's own argmax (greedy-tokens pass)
    graph_id: int = -1  # its CUDA graph (-1: not captured)


class GraphStaticExecutor(StaticExecutor):
    """The static executor whose decode steps replay CUDA graphs and sample on the device
    (`samples_on_device`: the engine loop takes token ids from `step_tokens`)."""

    samples_on_device = True

    def __init__(self, session: DecoderSession, slots: int, capacity: int,
                 candidates: int = DEFAULT_CANDIDATES) -> None:
        reason = unsupported_reason(session)
        if reason is not None:
            raise EngineError(f"decode steps of this engine cannot be captured: {reason}")
        super().__init__(session, slots, capacity)
        self.buckets = batch_buckets(slots)
        self.graphs = session.cuda_graph
        logits = next(o for o in session.session.get_outputs() if o.name == "logits")
        self.vocab = int(logits.shape[-1])
        self._logits_dtype = np.float16 if logits.type == "tensor(float16)" else np.float32
        self._outputs = {o.name for o in session.session.get_outputs()}
        self._ids = np.zeros((slots, 1), np.int64)
        self._mask = np.zeros((slots, capacity), np.int64)
        self._mask_len = np.zeros(slots, np.int64)  # lengths the mask rows encode
        self._params = RowParams.empty(slots)
        self._logits_from = np.zeros(1, np.int64)  # decode: every row's one position (older engines)
        self._steps: dict[int, _Bucket] = {}
        self.sampler = DeviceSampler(self.vocab, self._logits_dtype, self._device,
                                     session.provider_options, candidates)
        self.host_sampled = 0  # rows sampled on the host (min_tokens, wide top-k / top-p)
        # decode steps per host round trip (runtime.multi_step): greedy rows, on the session's stream
        self.rounds = (DeviceRounds(session, session.stream, session.decode_steps)
                       if session.stream is not None and "greedy_tokens" in self._outputs and self.graphs else None)

    @property
    def decode_steps(self) -> int:
        """Steps a round may run: 1 with prefix caching (a finished sequence's row stays a cache
        entry, and a round writes past its end)."""
        return 1 if self.rounds is None or self.pool.prefix_caching else self.rounds.steps

    # -- buffers ------------------------------------------------------------------------------
    def _bucket(self, size: int) -> _Bucket:
        step = self._steps.get(size)
        if step is not None:
            return step
        device = self._device
        binding = self.session.session.io_binding()
        ids = ort.OrtValue.ortvalue_from_shape_and_type((size, 1), np.int64, device, 0)
        mask = ort.OrtValue.ortvalue_from_shape_and_type((size, self.capacity), np.int64, device, 0)
        logits = ort.OrtValue.ortvalue_from_shape_and_type((size, 1, self.vocab), self._logits_dtype, device, 0)
        binding.bind_ortvalue_input("input_ids", ids)
        binding.bind_ortvalue_input("attention_mask", mask)
        positions = None
        if "logits_positions" in self._inputs:  # position 0 of every row, set once
            positions = ort.OrtValue.ortvalue_from_numpy(np.zeros((size, 1), np.int64), device, 0)
            binding.bind_ortvalue_input("logits_positions", positions)
        else:  # Slice reads its start on the host: a constant 0 in host memory
            binding.bind_input("logits_from", "cpu", 0, np.int64, (1,), self._logits_from.ctypes.data)
        binding.bind_ortvalue_output("logits", logits)
        greedy = None
        if "greedy_tokens" in self._outputs:
            greedy = ort.OrtValue.ortvalue_from_shape_and_type((size, 1), np.int64, device, 0)
            binding.bind_ortvalue_output("greedy_tokens", greedy)
        shape = (size,) + self._shape[1:]
        for past, present, value in self._buffers:
            binding.bind_input(past, device, 0, self._dtype, shape, value.data_ptr())
            binding.bind_output(present, device, 0, self._dtype, shape, value.data_ptr())
        run = ort.RunOptions()
        graph_id = self.session.new_graph_id() if self.graphs else None
        # always set: onnxruntime's Python layer looks the key up each run, slowly when absent
        run.add_run_config_entry("gpu_graph_id", str(-1 if graph_id is None else graph_id))
        step = _Bucket(binding, ids, mask, logits, run, positions, greedy, -1 if graph_id is None else graph_id)
        self.sampler.bind(size, logits)
        self._steps[size] = step
        return step

    def _run_bucket(self, size: int) -> _Bucket:
        """Copy rows [0, size) of the ids and the mask (each row over its slot's positions
        after this step) to the bucket's buffers and run (replay) its step."""
        step = self._bucket(size)
        mask_rows(self._mask[:size], self._mask_len[:size], self.slot_len[:size] + 1)
        step.ids.update_inplace(self._ids[:size])
        step.mask.update_inplace(self._mask[:size])
        self.session.session.run_with_iobinding(step.binding, step.run_options)
        return step

    # -- steps --------------------------------------------------------------------------------
    def step_tokens(self, prefill: Seq[tuple[Sequence, int, int]], decode: Seq[Sequence]
                    ) -> tuple[list[np.ndarray], list[int] | None]:
        """One iteration: each prefill chunk's last logits (V,) (uncaptured, sampled on the host
        by the caller), then one token id for each decoding sequence."""
        return self.prefill_chunks(prefill), (self.decode_tokens(decode) if decode else None)

    def _load_rows(self, seqs: Seq[Sequence]) -> tuple[np.ndarray, int]:
        """Each sequence's last token into its slot's row of the ids, after checking the slot
        holds every position before it; the slots and the bucket that covers them."""
        n = len(seqs)
        slots = np.fromiter((self.pool.slot(s.request_id) for s in seqs), np.int64, n)
        expected = np.fromiter((s.num_tokens for s in seqs), np.int64, n) - 1
        if (self.slot_len[slots] != expected).any():
            i = int(np.nonzero(self.slot_len[slots] != expected)[0][0])
            raise RuntimeError(f"slot {slots[i]} holds {self.slot_len[slots[i]]} positions, "
                               f"decode expects {expected[i]}")
        self._ids[slots, 0] = np.fromiter((s.last_token for s in seqs), np.int64, n)
        return slots, bucket_for(int(slots.max()) + 1, self.buckets)

    def decode_tokens(self, seqs: Seq[Sequence]) -> list[int]:
        """The next token of each sequence, chosen on the device (or, for rows that need it,
        on the host from the step's logits)."""
        slots, size = self._load_rows(seqs)
        step = self._run_bucket(size)
        greedy = None if step.greedy is None else (lambda: step.greedy.numpy()[:, 0])
        out, on_host = choose_tokens(seqs, slots, size, self._params, lambda p: self.sampler.run(size, size, p),
                                     greedy, lambda: step.logits.numpy()[:, -1])
        self.host_sampled += on_host
        self.slot_len[slots] += 1
        return out

    def decode_rounds(self, seqs: Seq[Sequence], k: int) -> list[list[int]]:
        """k greedy tokens of each sequence from k decode steps queued at once (runtime.multi_step):
        each step's mask rows staged before the round; rows of other slots write their
        placeholder where they would in a single step."""
        if self.rounds is None:
            raise RuntimeError("multi-step decoding is off for this executor (decode_steps 1)")
        slots, size = self._load_rows(seqs)
        step = self._bucket(size)
        busy = np.zeros(size, np.int64)
        busy[slots] = 1
        masks = np.empty((k, size, self.capacity), np.int64)
        for j in range(k):
            mask_rows(self._mask[:size], self._mask_len[:size], self.slot_len[:size] + 1 + j * busy)
            masks[j] = self._mask[:size]
        tokens = self.rounds.run(size, step.binding, step.graph_id, step.ids.data_ptr(), step.greedy.data_ptr(),
                                 self._ids[:size, 0], {}, {"mask": (step.mask.data_ptr(), masks)}, k)
        self.slot_len[slots] += k
        return tokens[:, slots].T.tolist()

    def capture(self, runs: int = 3) -> None:
        """Run every bucket's decode step `runs` times (onnxruntime captures a graph after its
        first runs), so no request pays for a capture. Rows are placeholders: each writes at its
        slot's next free position, which that slot's next real token overwrites."""
        self._params.clear()
        for size in self.buckets:
            for _ in range(runs):
                self._run_bucket(size)
                self.sampler.run(size, size, self._params)
