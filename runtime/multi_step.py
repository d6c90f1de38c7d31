"""Multi-step decoding: k decode steps of the same sequences per host round trip.

In the steady phase of serving (every running sequence decoding, none waiting, every row
greedy), the host's share of a captured decode step (planning the step, packing its rows,
copying them in, reading the tokens back: ~3 of 22.9 ms at 512 rows on the 8B shape, session
36) is paid once for k steps. The executor queues k replays of the bucket's captured graph on
onnxruntime's stream and, between them, copies on the device each step's greedy tokens into
the next step's input ids and the next row of past lengths into the past input; each step's
tokens go to page-locked host memory; the host waits once (`DeviceRounds.run`). The block
tables cover the k positions before the round (`plan_steps`), so they do not change inside it.
A token after a sequence's end (EOS, a stop string) is dropped by the engine loop, and its
cache position lies in a block the sequence holds until it is freed.

`OPTIMIZER_DECODE_STEPS=k` (default 1: every step planned by the host) turns it on for paged
engines on CUDA with captured decode steps (`decode_steps_wanted`); sessions then run on a
stream of the runtime's own (`runtime.cuda_stream`), given to onnxruntime as the CUDA
provider's `user_compute_stream`, so that the copies queue in order with its graphs.
"""

from __future__ import annotations

import os
from typing import Any, Sequence as Seq

import numpy as np
import onnxruntime as ort

from optimizer.core.errors import EngineError
from runtime.sequence import Sequence

MAX_STEPS = 64


def decode_steps_wanted(value: int | None = None) -> int:
    """Decode steps per host round trip: `value`, else OPTIMIZER_DECODE_STEPS, else 1."""
    raw = str(value) if value is not None else os.environ.get("OPTIMIZER_DECODE_STEPS", "1")
    try:
        steps = int(raw)
    except ValueError:
        steps = 0
    if not 1 <= steps <= MAX_STEPS:
        raise EngineError(f"OPTIMIZER_DECODE_STEPS={raw!r}: decode steps per round must be 1 to {MAX_STEPS}",
                          hint="1 turns multi-step decoding off; 4-16 is the useful range")
    return steps


def plan_steps(seqs: Seq[Sequence], steps: int, pool: Any, waiting: bool) -> int:
    """How many decode steps `seqs` run in one round (1: an ordinary step). More than one only
    when no request waits for admission (it would wait k steps), every row is greedy on the
    device (no sampling, penalties, logprobs, grammar or EOS held back), k fits every sequence's
    remaining tokens and the engine's length, and the pool gives each sequence blocks for the
    k positions (`pool.ensure`; blocks taken for a round that does not run stay with their
    sequence and serve its next tokens)."""
    if steps <= 1 or waiting or not seqs:
        return 1
    if any(not s.greedy_on_device() or s.guide is not None for s in seqs):
        return 1
    k = min(steps, min(s.params.max_new_tokens - len(s.output_ids) for s in seqs),
            pool.max_tokens() - max(s.num_tokens for s in seqs) + 1)
    if k <= 1:
        return 1
    if not all(pool.ensure(s.request_id, s.num_tokens + k - 1) for s in seqs):
        return 1
    return k


def past_rows(past: np.ndarray, rows: int, steps: int) -> np.ndarray:
    """(steps, len(past)) int32: each step's past lengths. The first `rows` rows advance by one
    position a step; placeholder rows stay at 0 (their key and value land in the scratch block)."""
    out = np.zeros((steps, len(past)), np.int32)
    out[:, :rows] = past[:rows][None, :] + np.arange(steps, dtype=np.int32)[:, None]
    return out


class _Staging:
    """A bucket's page-locked host arrays and device rows for rounds of up to `steps` steps."""

    def __init__(self, size: int, width: int, steps: int) -> None:
        from runtime.cuda_stream import PinnedArray
        from runtime.gpu_memory import DeviceBuffer

        self.ids = PinnedArray((size,), np.int64)
        self.table = PinnedArray((size, width), np.int32)
        self.past = PinnedArray((steps, size), np.int32)
        self.tokens = PinnedArray((steps, size), np.int64)
        self.past_device = DeviceBuffer(steps * size * 4)


class DeviceRounds:
    """Rounds of k decode steps through a `GraphPagedExecutor`'s captured buckets (module
    docstring), on the session's stream."""

    def __init__(self, executor: Any, stream: Any, steps: int) -> None:
        self.executor, self.stream, self.steps = executor, stream, steps
        self._staging: dict[int, _Staging] = {}
        self._run_options: dict[int, ort.RunOptions] = {}

    def reset(self) -> None:
        """The executor's buckets were rebuilt (a new pool): stage afresh."""
        self._staging.clear()
        self._run_options.clear()

    def _queued_run(self, size: int, graph_id: int) -> ort.RunOptions:
        """The bucket's graph, replayed without waiting for the GPU."""
        run = self._run_options.get(size)
        if run is None:
            run = ort.RunOptions()
            run.add_run_config_entry("gpu_graph_id", str(graph_id))
            run.add_run_config_entry("disable_synchronize_execution_providers", "1")
            self._run_options[size] = run
        return run

    def run(self, seqs: Seq[Sequence], k: int) -> list[list[int]]:
        """k greedy tokens of each of `seqs` (k <= steps), one round trip."""
        from runtime.cuda_stream import D2D, D2H, H2D
        from runtime.graph_executor import bucket_for
        from runtime.paged_graphs import pack_decode

        ex, stream = self.executor, self.stream
        n, size = len(seqs), bucket_for(len(seqs), ex.buckets)
        step = ex._bucket(size)
        pack_decode([s.last_token for s in seqs], [s.num_tokens - 1 for s in seqs],
                    [ex.pool.table(s.request_id) for s in seqs], size, ex._ids, ex._past, ex._table, ex.scratch_block)
        st = self._staging.get(size)
        if st is None:
            st = self._staging[size] = _Staging(size, ex.width, self.steps)
        st.ids.array[:] = ex._ids[0, :size]
        st.table.array[:] = ex._table[:size]
        st.past.array[:k] = past_rows(ex._past[:size], n, k)
        row_ids, row_past = size * 8, size * 4
        stream.copy(step.ids.data_ptr(), st.ids.address, row_ids, H2D)
        stream.copy(step.table.data_ptr(), st.table.address, st.table.array.nbytes, H2D)
        stream.copy(st.past_device.address, st.past.address, k * row_past, H2D)
        run = self._queued_run(size, step.graph_id)
        for j in range(k):
            if j:
                stream.copy(step.ids.data_ptr(), step.greedy.data_ptr(), row_ids, D2D)
            stream.copy(step.past.data_ptr(), st.past_device.address + j * row_past, row_past, D2D)
            ex.session.session.run_with_iobinding(step.binding, run)
            stream.copy(st.tokens.address + j * row_ids, step.greedy.data_ptr(), row_ids, D2H)
        stream.synchronize()
        return st.tokens.array[:k, :n].T.tolist()
