"""The single-sequence generation loop over a DecoderSession: prefill, then decode step by step.

Stops on an EOS / stop token (unless `ignore_eos`) or after `max_new_tokens`. `on_token` is
called with each new token id as soon as it is chosen (streaming).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from optimizer.errors import InputError
from runtime.sampling import SamplingParams, sample_next
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
    stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
    rng = np.random.default_rng(params.seed)
    ids = np.asarray([prompt_ids], dtype=np.int64)  # (1, S)
    n = ids.shape[1]
    start = time.perf_counter()
    cache = session.new_cache(1, n + params.max_new_tokens)
    logits, cache = session.forward(ids, np.ones((1, n), np.int64), np.arange(n)[None], cache)
    prefill_seconds = time.perf_counter() - start
    out: list[int] = []
    finish = "length"
    start = time.perf_counter()
    while True:
        token = sample_next(logits[0, -1], params, rng)
        out.append(token)
        if on_token is not None:
            on_token(token)
        if token in stop_ids:
            finish = "stop"
            break
        if len(out) >= params.max_new_tokens:
            break
        pos = n + len(out) - 1  # position of the token just chosen
        logits, cache = session.forward(np.asarray([[token]], np.int64), np.ones((1, pos + 1), np.int64),
                                        np.asarray([[pos]], np.int64), cache)
    return GenerationResult(out, finish, n, prefill_seconds, time.perf_counter() - start)
