"""A draft engine for speculative decoding: a smaller (or cheaper) engine with the target's
tokenizer proposes k tokens per sequence, one decode step each (runtime.speculative).

The drafter keeps its own KV cache, a static executor of the target's slots and capacity, and
remembers which tokens each sequence's draft row holds. Before drafting it keeps the longest
prefix of those that the sequence still has (accepted drafts stay, rejected ones are rolled
back), computes the rest of the sequence's tokens as one chunk (usually the last accepted
draft and the target's own token), then decodes k tokens: greedy drafts for greedy requests,
sampled ones (with their distributions q, for the rejection rule) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence as Seq

import numpy as np

from optimizer.core.errors import InputError
from runtime.sampling import draw_uniform, sample_from_uniform, sampling_probs, suppress
from runtime.sequence import Sequence
from runtime.speculative import Draft


@dataclass(eq=False)
class _DraftRow:
    """What the executors read of a sequence: its id and tokens (the target's, then drafts)."""

    request_id: str
    all_ids: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.all_ids)

    @property
    def last_token(self) -> int:
        return self.all_ids[-1]


def check_same_tokenizer(target: Any, draft: Any) -> None:
    """The draft engine must speak the target's tokens: same vocabulary, same logits width."""
    if target.tokenizer is None or draft.tokenizer is None:
        raise InputError("a draft engine and its target both need their tokenizer to be checked against "
                         "each other, and one of them has none",
                         hint="rebuild the engines with --tokenizer, or use --speculative ngram")
    if target.tokenizer.get_vocab() != draft.tokenizer.get_vocab():
        raise InputError(f"the draft engine's tokenizer ({draft.dir.path}) differs from the target's "
                         f"({target.dir.path}): its token ids mean other things",
                         hint="use a draft engine built from a model of the same family (same tokenizer)")
    widths = [e.session.logits_type()[1] for e in (target, draft)]
    if widths[0] != widths[1]:
        raise InputError(f"the draft engine scores {widths[1]} tokens and the target {widths[0]}",
                         hint="use a draft engine with the target's vocabulary")


class DraftModelDrafter:
    def __init__(self, draft: Any, target_executor: Any) -> None:
        """`draft`: a loaded runtime.Engine; its cache gets the target executor's slots and
        capacity (static layout: in place; other layouts work too)."""
        from runtime.executors import make_executor

        self.engine = draft
        capacity = getattr(target_executor, "capacity", None) or target_executor.pool.max_tokens()
        self.executor = make_executor(draft.session, target_executor.max_sequences, capacity)
        if not hasattr(self.executor, "rollback"):
            raise InputError("the draft engine has the paged KV-cache layout, which cannot roll back drafts "
                             "in this version", hint="build the draft engine with --kv-layout static")
        self._rows: dict[str, _DraftRow] = {}  # request id -> the tokens its draft row holds (and one more)

    def _row(self, seq: Sequence) -> _DraftRow | None:
        """The sequence's draft row with only still-valid tokens computed; None if no room."""
        row = self._rows.get(seq.request_id)
        pool = self.executor.pool
        if row is None:
            if not pool.admit(seq.request_id, seq.max_total_tokens):
                return None
            row = self._rows[seq.request_id] = _DraftRow(seq.request_id)
        computed = self.executor.cached_length(row)
        tokens = seq.all_ids
        keep = 0
        limit = min(computed, len(tokens) - 1)
        while keep < limit and row.all_ids[keep] == tokens[keep]:
            keep += 1
        self.executor.rollback(row, keep)
        row.all_ids = list(tokens)
        return row

    def propose(self, seqs: Seq[Sequence], ks: Seq[int]) -> list[Draft]:
        drafts = [Draft([]) for _ in seqs]
        active = [(i, row) for i, (seq, k) in enumerate(zip(seqs, ks)) if k > 0
                  for row in [self._row(seq)] if row is not None]
        if not active:
            return drafts
        chunks = [(row, self.executor.cached_length(row), row.num_tokens) for _, row in active]
        step_logits = self.executor.step(chunks, [])[0]
        qs: dict[int, list[np.ndarray]] = {i: [] for i, _ in active}
        while active:
            for (i, row), logits in zip(active, step_logits):
                seq = seqs[i]
                token, q = _draw(seq, logits, len(drafts[i].tokens))
                drafts[i].tokens.append(token)
                if q is not None:
                    qs[i].append(q)
                row.all_ids.append(token)
            active = [(i, row) for i, row in active if len(drafts[i].tokens) < ks[i]]
            if active:
                step_logits = self.executor.decode([row for _, row in active])
        for i, q in qs.items():
            if q:
                drafts[i].q = np.stack(q)
        return drafts

    def release(self, seq: Sequence) -> None:
        row = self._rows.pop(seq.request_id, None)
        if row is not None:
            self.executor.release(row)
            self.executor.pool.release(seq.request_id)


def _draw(seq: Sequence, logits: np.ndarray, drafted: int) -> tuple[int, np.ndarray | None]:
    """A draft token from the draft's (V,) logits: greedy (no q) or sampled from q with the
    request's sampling parameters (q returned for the rejection rule)."""
    if len(seq.output_ids) + drafted < seq.params.min_tokens and seq.stop_ids:
        logits = suppress(logits, seq.stop_ids)
    if seq.params.temperature == 0.0:
        return int(np.argmax(logits)), None
    q = sampling_probs(logits, seq.params)
    return sample_from_uniform(q, draw_uniform(seq.rng)), q
