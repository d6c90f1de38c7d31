"""Multi-step decoding: k decode steps of the same sequences per host round trip.

In the steady phase of serving (every running sequence decoding, none waiting, every row
greedy) and in a lone greedy request's loop, the host's share of a captured decode step
(planning it, packing its rows, copying them in, reading the tokens back: ~3 of 22.9 ms at 512
rows on the 8B shape, session 36; ~0.3 of 1.43 ms at batch 1 on the 1B shape) is paid once for
k steps. The executor queues k replays of the bucket's captured graph on onnxruntime's stream
and, between them, copies on the device each step's greedy tokens into the next step's input
ids and that step's row of the inputs that change (the paged layout's past lengths, the
static layout's mask rows); each step's tokens go to page-locked host memory; the host waits
once (`DeviceRounds.run`). What else a step reads stays for the round: a paged sequence's
block table covers the k positions before it starts (`plan_steps`), a static slot holds its
whole capacity. A token after a sequence's end (EOS, a stop string) is dropped by the loop, and
its cache position is one the sequence holds until it is freed (static executors with prefix
caching, whose finished rows stay as cache entries, do not run rounds).

Engines on CUDA with captured decode steps can run rounds of up to `DEFAULT_STEPS` (8) decode
steps (`OPTIMIZER_DECODE_STEPS=k` sets another limit; 1 turns rounds off); their sessions
then run on a stream of the runtime's own (`runtime.cuda_stream`), given to onnxruntime as the
CUDA provider's `user_compute_stream`, so that the copies queue in order with its graphs. Each
loop chooses its own limit up to that (`LLMEngine(decode_steps=...)`): offline generation uses
it all; the HTTP server runs single steps unless `--decode-steps` says otherwise, since a
request that arrives during a round waits for the round's end and a stream's tokens come in
bursts of k. Session 37 (one H200, 512 requests of 128/128 on the 8B shape): rounds of 8 gave
1.06x single steps (14,383 and 14,277 out tok/s against 13,346 and 13,651); batch 1 at the 1B
shape 785 against 768 tok/s (its step is GPU-bound); the CUDA tests hold rounds to the tokens
of single steps.
"""

from __future__ import annotations

import os
from typing import Any, Sequence as Seq

import numpy as np
import onnxruntime as ort

from optimizer.core.errors import EngineError
from runtime.sequence import Sequence

MAX_STEPS = 64
DEFAULT_STEPS = 8  # the host pays ~1/k of its per-step share; 8 is the length session 37 measured


def decode_steps_wanted(value: int | None = None) -> int:
    """Decode steps per host round trip: `value`, else OPTIMIZER_DECODE_STEPS, else DEFAULT_STEPS."""
    raw = str(value) if value is not None else os.environ.get("OPTIMIZER_DECODE_STEPS", str(DEFAULT_STEPS))
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


class DeviceRounds:
    """Rounds of k decode steps through one executor's captured buckets (module docstring), on
    the session's stream. An executor hands `run` a bucket's binding and graph, where its input
    ids and greedy tokens live, the first step's ids, the inputs that stay for the round and
    those that change each step (one row per step); page-locked staging and device rows are
    kept per bucket and input."""

    def __init__(self, session: Any, stream: Any, steps: int) -> None:
        self.session, self.stream, self.steps = session, stream, steps
        self._host: dict[tuple[int, str], Any] = {}
        self._device: dict[tuple[int, str], Any] = {}
        self._run_options: dict[int, ort.RunOptions] = {}

    def reset(self) -> None:
        """The executor's buckets were rebuilt (a new cache): stage afresh."""
        self._host.clear()
        self._device.clear()
        self._run_options.clear()

    def _pinned(self, size: int, name: str, shape: tuple[int, ...], dtype) -> Any:
        from runtime.cuda_stream import PinnedArray

        held = self._host.get((size, name))
        if held is None or held.array.shape != shape or held.array.dtype != np.dtype(dtype):
            held = self._host[(size, name)] = PinnedArray(shape, dtype)
        return held

    def _rows(self, size: int, name: str, nbytes: int) -> Any:
        from runtime.gpu_memory import DeviceBuffer

        held = self._device.get((size, name))
        if held is None or held.nbytes != nbytes:
            held = self._device[(size, name)] = DeviceBuffer(nbytes)
        return held

    def _queued_run(self, graph_id: int) -> ort.RunOptions:
        """The bucket's graph, replayed without waiting for the GPU."""
        run = self._run_options.get(graph_id)
        if run is None:
            run = ort.RunOptions()
            run.add_run_config_entry("gpu_graph_id", str(graph_id))
            run.add_run_config_entry("disable_synchronize_execution_providers", "1")
            self._run_options[graph_id] = run
        return run

    def run(self, size: int, binding: Any, graph_id: int, ids: int, greedy: int, first_ids: np.ndarray,
            constant: dict[str, tuple[int, np.ndarray]], per_step: dict[str, tuple[int, np.ndarray]],
            k: int) -> np.ndarray:
        """k steps of a bucket of `size` rows; (k, size) int64 tokens.

        `ids` / `greedy`: device addresses of the bucket's input ids and greedy tokens (size
        int64 each); `first_ids`: (size,) the first step's ids; `constant[name] = (address,
        array)`: copied once; `per_step[name] = (address, array (k, ...))`: row j before step j."""
        from runtime.cuda_stream import D2D, D2H, H2D

        stream = self.stream
        staged = self._pinned(size, "ids", (size,), np.int64)
        staged.array[:] = first_ids
        stream.copy(ids, staged.address, size * 8, H2D)
        for name, (address, array) in constant.items():
            held = self._pinned(size, name, array.shape, array.dtype)
            held.array[...] = array
            stream.copy(address, held.address, array.nbytes, H2D)
        rows = []
        for name, (address, array) in per_step.items():
            row_bytes = array[0].nbytes
            held = self._pinned(size, name, (self.steps,) + array.shape[1:], array.dtype)
            held.array[:k] = array
            device = self._rows(size, name, self.steps * row_bytes)
            stream.copy(device.address, held.address, k * row_bytes, H2D)
            rows.append((address, device.address, row_bytes))
        tokens = self._pinned(size, "tokens", (self.steps, size), np.int64)
        run = self._queued_run(graph_id)
        for j in range(k):
            if j:
                stream.copy(ids, greedy, size * 8, D2D)
            for address, device, row_bytes in rows:
                stream.copy(address, device + j * row_bytes, row_bytes, D2D)
            self.session.session.run_with_iobinding(binding, run)
            stream.copy(tokens.address + j * size * 8, greedy, size * 8, D2H)
        stream.synchronize()
        return tokens.array[:k].copy()
