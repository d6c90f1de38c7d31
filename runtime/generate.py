"""The single-sequence generation loop over a DecoderSession: prefill, then decode step by step.

It stops as `runtime.sequence.Sequence` says (EOS / stop token, min_tokens, max_new_tokens).
`on_token` is called with each new token id as soon as it is chosen (streaming). This is the
lowest-overhead path for one request; `runtime.llm_engine` batches many.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

from optimizer.core.errors import InputError
from runtime.sampling import SamplingParams
from runtime.sequence import Sequence as Seq
from runtime.executors import make_executor
from runtime.session import DecoderSession


@dataclass
class GenerationResult:
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or stop token) | "length"
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float

    @property
    def decode_tokens_per_second(self) -> float:
        steps = len(self.token_ids) - 1  # the first token comes from the prefill
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else 0.0


def generate_ids(session: DecoderSession, prompt_ids: Sequence[int], params: SamplingParams,
                 eos_token_ids: Sequence[int] = (),
                 on_token: Callable[[int], None] | None = None) -> GenerationResult:
    if len(prompt_ids) == 0:
        raise InputError("the prompt is empty", hint="pass a prompt with at least one token")
    if params.stop:
        raise InputError("stop strings need text: use Engine.generate, not generate_ids")
    seq = Seq("0", list(prompt_ids), params, eos_token_ids)
    n = len(seq.prompt_ids)
    start = time.perf_counter()
    executor = _executor(session, seq.max_total_tokens)
    executor.pool.admit(seq.request_id, seq.max_total_tokens)
    try:
        token = seq.choose(executor.prefill(seq, 0, n))
        prefill_seconds = time.perf_counter() - start
        start = time.perf_counter()
        decode_loop(executor, seq, token, on_token)
    finally:
        executor.release(seq)
        executor.pool.release(seq.request_id)
    return GenerationResult(seq.output_ids, seq.finish_reason, n, prefill_seconds, time.perf_counter() - start)


def decode_loop(executor, seq: Seq, token: int, on_token: Callable[[int], None] | None = None) -> None:
    """Append `token` (the prefill's) and decode until the sequence finishes: one step at a
    time, or, where the executor queues several (`decode_steps`, runtime.multi_step) and the
    sequence is greedy on the device, rounds of up to that many steps, the tokens after its
    end dropped."""
    on_device = getattr(executor, "samples_on_device", False)
    steps = getattr(executor, "decode_steps", 1)
    pending = [token]
    while True:
        for token in pending:
            seq.append(token)
            if on_token is not None:
                on_token(token)
            if seq.finished:
                return
        k = min(steps, seq.params.max_new_tokens - len(seq.output_ids)) if seq.greedy_on_device() else 1
        if k > 1:
            pending = executor.decode_rounds([seq], k)[0]
        else:
            pending = [executor.decode_tokens([seq])[0] if on_device else seq.choose(executor.decode([seq])[0])]


def _executor(session: DecoderSession, tokens: int):
    """A one-slot executor for `tokens` positions. With CUDA graphs it is kept on the session
    and reused by later requests (its captured graphs refer to its buffers), sized for the
    engine's longest sequence; otherwise a new one sized for this request."""
    if not session.cuda_graph:
        return make_executor(session, slots=1, capacity=tokens)
    kv = session.kv
    capacity = max(tokens, kv.max_sequence_length or kv.slot_capacity or tokens)
    executor = session.executors.get("single")
    if executor is None or executor.capacity < tokens:
        executor = session.executors["single"] = make_executor(session, slots=1, capacity=capacity)
    return executor
