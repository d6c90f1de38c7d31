"""Speculative decoding: draft k tokens cheaply, verify them all in one target step.

A verification step feeds each sequence's last token and its k drafted tokens like a prefill
chunk (`executor.verify`) and gets the target's logits at all k+1 positions. Position i's
logits decide token i:

- greedy: the target's argmax; the draft is accepted while it equals it, so the output is
  exactly the target's greedy output (on batch-invariant engines: see README Limits);
- sampled: the standard rejection rule (Leviathan et al. 2023, https://arxiv.org/abs/2211.17192;
  Chen et al. 2023): with the target distribution p and the draft's q, draft token d is kept
  with probability min(1, p(d) / q(d)); on rejection the token is drawn from
  norm(max(0, p - q)) and the step ends. Prompt-lookup drafts are point masses (q(d) = 1, so
  d is kept with probability p(d), and a rejection draws from p with d removed). Either way
  every emitted token follows the target distribution exactly.

When all k drafts are accepted, the (k+1)th logits give one more token, so a step emits
between 1 and k+1 tokens per sequence. Keys and values written for rejected drafts are
rolled back (`executor.rollback`: the static layout's row length, the concat layout's arrays).

The rule itself is `runtime.sampling.accept_or_resample`, applied by `Sequence.choose`.
Drafters (`make_drafter`): `ngram` (prompt lookup: the tokens that followed the latest earlier
occurrence of the sequence's last n tokens, as vLLM's `ngram` and llama.cpp's lookup do) and
`draft` (a smaller engine with the same tokenizer: runtime.draft_model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence as Seq

import numpy as np

from optimizer.core.errors import InputError
from runtime.sequence import Sequence

METHODS = ("ngram", "draft")


@dataclass(frozen=True)
class SpeculativeConfig:
    """How to speculate: `method` ngram or draft, `num_tokens` drafted per step (k), the n-gram
    lengths prompt lookup tries (longest first), for `draft` the draft engine (a loaded
    runtime.Engine with the target's tokenizer), and the largest decode batch to speculate at."""

    method: str = "ngram"
    # k = 8 from matches of exactly 3 tokens: the fastest of the settings measured on SmolLM2-135M
    # int4, batch 1, code editing (benchmarks/results/speculative): a verification step costs about
    # two decode steps on the CPU, so drafting only from longer matches wastes fewer of them
    num_tokens: int = 8
    ngram_max: int = 3
    ngram_min: int = 3
    draft: Any = None
    # speculate only while at most this many sequences decode together: verification runs one
    # call per drafting sequence (onnxruntime's GQA; CachedAttention engines: one call for all),
    # each about two decode steps on the CPU, so at larger batches it costs more than the batched
    # decode step it replaces
    max_batch: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown speculative method {self.method!r}", hint=f"choose one of {', '.join(METHODS)}")
        if self.num_tokens < 1:
            raise InputError(f"the number of speculative tokens must be >= 1, got {self.num_tokens}")
        if self.max_batch < 1:
            raise InputError(f"the largest batch to speculate at must be >= 1, got {self.max_batch}")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise InputError(f"n-gram lengths need 1 <= min <= max, got {self.ngram_min}..{self.ngram_max}")
        if (self.method == "draft") != (self.draft is not None):
            raise InputError("a draft engine goes with --speculative draft (and only with it)",
                             hint="pass --speculative draft --draft ENGINE_DIR, or --speculative ngram alone")


@dataclass
class Draft:
    """A sequence's drafted tokens and the distributions they were drawn from: q (k, V), or
    None for point masses (prompt lookup, greedy drafting)."""

    tokens: list[int]
    q: np.ndarray | None = None


class Drafter(Protocol):
    def propose(self, seqs: Seq[Sequence], ks: Seq[int]) -> list[Draft]:
        """Up to ks[i] tokens for each sequence (fewer, or none, where it has no guess)."""

    def release(self, seq: Sequence) -> None:
        """The sequence finished or was aborted: drop what the drafter keeps for it."""


# -- the math --------------------------------------------------------------------------------
def ngram_draft(tokens: Seq[int], k: int, max_n: int = 3, min_n: int = 1) -> list[int]:
    """Prompt lookup: the k tokens that followed the latest earlier occurrence of the last n
    tokens, trying n = max_n down to min_n; [] where none recurs. Where fewer than k tokens
    follow it (a repeating pattern), the pattern continues periodically.

    >>> ngram_draft([5, 6, 7, 8, 1, 5, 6], 3)
    [7, 8, 1]
    >>> ngram_draft([1, 2, 3, 2, 3], 4)
    [2, 3, 2, 3]
    """
    ids = np.asarray(tokens, np.int64)
    length = len(ids)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        # windows starting at 0 .. length-1-n: each has at least one token after it
        windows = np.lib.stride_tricks.sliding_window_view(ids[:length - 1], n)
        hits = np.flatnonzero((windows == ids[length - n:]).all(axis=1))
        if hits.size:  # copy what followed; a match close to the end continues into the copy itself
            start = int(hits[-1]) + n
            draft = ids[start:start + k].tolist()
            while len(draft) < k:
                draft.append(draft[len(draft) - (length - start)])
            return draft
    return []


# -- drafters ----------------------------------------------------------------------------------
class NgramDrafter:
    """Prompt-lookup drafts from each sequence's own prompt and output (no model)."""

    def __init__(self, max_n: int = 3, min_n: int = 3) -> None:
        self.max_n, self.min_n = max_n, min_n

    def propose(self, seqs: Seq[Sequence], ks: Seq[int]) -> list[Draft]:
        return [Draft(ngram_draft(s.all_ids, k, self.max_n, self.min_n) if k > 0 else []) for s, k in zip(seqs, ks)]

    def release(self, seq: Sequence) -> None:
        pass


def make_drafter(config: SpeculativeConfig, executor: Any) -> Drafter:
    """The drafter of `config` for a target `executor` (a draft engine gets a cache of the
    same slots and capacity)."""
    if config.method == "ngram":
        return NgramDrafter(config.ngram_max, config.ngram_min)
    from runtime.draft_model import DraftModelDrafter  # loads onnxruntime sessions: only when asked

    return DraftModelDrafter(config.draft, executor)
