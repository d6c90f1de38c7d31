"""One request's generation state: its tokens, its text, and when it ends.

Shared by the single-sequence loop (`runtime.generate`) and the continuous-batching engine
(`runtime.llm_engine`), so both stop for the same reasons:

- a stop token (always), or EOS unless `ignore_eos`; neither before `min_tokens` tokens
  (they are masked out of the logits until then, as vLLM does);
- a stop string: the text ends before it and the request finishes (`finish_reason` "stop");
  while text could still turn into a stop string it is held back from the stream;
- `max_new_tokens` ("length"), or an abort ("abort").

Before a token is chosen its logits get the request's logit bias and penalties
(runtime.penalties); with `logprobs` set, each chosen token's log-probability under the
engine's raw logits (log_softmax, before any adjustment) and the k most likely tokens are
kept in `logprobs`, one (token, logprob, top) entry per output token. A structured-output
request's `guide` (runtime.guided, set by the engine) masks the logits to what its grammar
allows and follows each chosen token; the request finishes ("stop") when the grammar is complete,
or alone with "error" (and `error` saying why) where the grammar refuses the token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence as Seq

import numpy as np

from runtime.detokenize import IncrementalDetokenizer
from runtime.guided import GrammarError
from runtime.penalties import (apply_frequency_presence, apply_logit_bias, apply_repetition_penalty, log_softmax,
                               top_logprobs)
from runtime.sampling import SamplingParams, accept_or_resample, sample_next, sampling_probs, suppress


@dataclass(eq=False)  # one object per request: compared (and hashed) by identity
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    eos_token_ids: Seq[int] = ()
    tokenizer: Any | None = None  # None: ids only (no text, no stop strings)
    arrival_time: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        p = self.params
        self.stop_ids = frozenset(p.stop_token_ids) | (frozenset() if p.ignore_eos else frozenset(self.eos_token_ids))
        self.rng = np.random.default_rng(p.seed)
        self.output_ids: list[int] = []
        self.text = ""  # released text (never contains a stop string)
        self._pending = ""  # decoded text held back: it may be the start of a stop string
        self._detok = IncrementalDetokenizer(self.tokenizer) if self.tokenizer is not None else None
        if p.stop and self._detok is None:
            raise ValueError("stop strings need a tokenizer")
        self.finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
        self.num_computed = 0  # tokens whose keys/values are in the cache
        self.cached_tokens: int | None = None  # prompt tokens found in the prefix cache (None: not looked up yet)
        self.first_token_time: float | None = None
        self.finish_time: float | None = None
        self._counts: dict[int, int] = {}  # output token -> occurrences (penalties)
        self._prompt_set: np.ndarray | None = None  # distinct prompt ids (repetition penalty)
        # per output token: (token, logprob, [(token, logprob), ...] most likely first)
        self.logprobs: list[tuple[int, float, list[tuple[int, float]]]] = []
        self.guide: Any | None = None  # runtime.guided.Guide of a structured-output request
        self.error: str | None = None  # why this request failed alone (finish_reason "error"): its grammar

    # -- state ---------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def last_token(self) -> int:
        """The newest token: the one a decode step feeds."""
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def max_total_tokens(self) -> int:
        """Cache positions this request can need: the prompt, then every output token but the last."""
        return len(self.prompt_ids) + self.params.max_new_tokens - 1

    # -- one step --------------------------------------------------------------------------
    def suppressing(self) -> bool:
        """Whether EOS and stop tokens are still masked out (fewer than min_tokens outputs)."""
        return len(self.output_ids) < self.params.min_tokens and bool(self.stop_ids)

    def greedy_on_device(self) -> bool:
        """Whether the next token is the argmax of the raw logits (no sampling, nothing masked),
        which an engine's own greedy_tokens output gives without the logits leaving the device
        (not where penalties, a logit bias or logprobs need the logits on the host)."""
        return self.params.temperature == 0 and not self.params.needs_host and not self.suppressing()

    def choose(self, logits: np.ndarray, u: float | None = None, draft: int | None = None,
               q: np.ndarray | None = None) -> int:
        """The next token from (V,) logits, honouring min_tokens. `u`: the uniform number a
        sampled token consumes, when it was already drawn from this sequence's generator.
        `draft`: a speculatively drafted token for this position (runtime.speculative), drawn
        from `q` (None: a point mass): greedy gives the argmax all the same, sampling keeps the
        draft by the rejection rule (`accept_or_resample`), so the token follows the same law."""
        raw = logits
        if self.params.adjusts_logits:
            logits = self.adjusted(logits)
        if self.guide is not None:
            logits = self.guide.apply(logits)
        if self.suppressing():
            held = suppress(logits, self.stop_ids)
            logits = held if not self.guide or np.isfinite(held).any() else logits  # the grammar must end
        if draft is None or self.params.temperature == 0.0:
            token = sample_next(logits, self.params, self.rng, u)
        else:
            token = accept_or_resample(sampling_probs(logits, self.params), draft, q, self.rng)
        if self.guide is not None:
            try:
                self.guide.consume(token)
            except GrammarError as e:  # this request ends ("error"), the others in its step go on
                self.error = e.message
        if self.params.logprobs is not None:
            lp = log_softmax(raw)
            self.logprobs.append((token, float(lp[token]), top_logprobs(lp, self.params.logprobs)))
        return token

    def adjusted(self, logits: np.ndarray) -> np.ndarray:
        """The logits with this request's logit bias, repetition, frequency and presence penalties."""
        p = self.params
        logits = apply_logit_bias(logits, p.logit_bias)
        if p.repetition_penalty != 1.0:
            if self._prompt_set is None:
                self._prompt_set = np.unique(np.asarray(self.prompt_ids, np.int64))
            seen = np.union1d(self._prompt_set, np.fromiter(self._counts, np.int64, len(self._counts)))
            logits = apply_repetition_penalty(logits, seen, p.repetition_penalty)
        if self._counts:
            ids = np.fromiter(self._counts, np.int64, len(self._counts))
            counts = np.fromiter(self._counts.values(), np.float64, len(self._counts))
            logits = apply_frequency_presence(logits, ids, counts, p.frequency_penalty, p.presence_penalty)
        return logits

    def append(self, token: int, now: float | None = None) -> str:
        """Record a new token; return the text it releases (maybe ""). Sets finish_reason."""
        now = time.perf_counter() if now is None else now
        if self.first_token_time is None:
            self.first_token_time = now
        self.output_ids.append(token)
        if self.params.adjusts_logits:  # the penalties read the counts
            self._counts[token] = self._counts.get(token, 0) + 1
        delta = ""
        if self.error is not None:
            self.finish_reason = "error"
        elif token in self.stop_ids:
            self.finish_reason = "stop"
        elif len(self.output_ids) >= self.params.max_new_tokens:
            self.finish_reason = "length"
        elif self.guide is not None and self.guide.done:
            self.finish_reason = "stop"  # the structured output is complete
        if self._detok is not None:
            piece = self._detok.push(token)
            if self.finish_reason is not None:
                piece += self._detok.flush()
            delta = self._release(piece)
        if self.finish_reason is not None:
            self.finish_time = now
        return delta

    def abort(self) -> None:
        if self.finish_reason is None:
            self.finish_reason, self.finish_time = "abort", time.perf_counter()

    def _release(self, piece: str) -> str:
        """Text that can be streamed now: everything before a stop string (which finishes the
        request), less any tail that might still become one."""
        pending = self._pending + piece
        stops = self.params.stop
        hit = min((i for i in (pending.find(s) for s in stops) if i >= 0), default=-1) if stops else -1
        if hit >= 0:
            out, self._pending = pending[:hit], ""
            self.finish_reason = "stop"
        elif self.finish_reason is not None or not stops:
            out, self._pending = pending, ""
        else:
            keep = _partial_stop_suffix(pending, stops)
            out, self._pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
        self.text += out
        return out


def _partial_stop_suffix(text: str, stops: Seq[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
