"""Each decoding row's next token after a captured decode step, chosen on the device where it
can be: the shared last part of both graph executors' decode steps (static slots and paged).

A row's token comes from, in order of preference:

- the engine's own argmax (`greedy_tokens`), when every row of the step is greedy;
- the device sampler (`runtime.device_sampler`), for rows that sample with temperature, top-k
  and top-p: the host draws each row's uniform number from the request's generator, so a seed
  gives the same token on either side;
- the host, from the step's logits copied back, for rows that need what the device does not do
  (penalties, logit bias, logprobs, structured output, EOS held back for min_tokens) and rows
  the sampler hands back (a top-k / top-p cut wider than its candidates), with the same
  uniform number.

Only b token ids (and b flags) cross to the host unless some row needs the host.
"""

from __future__ import annotations

from typing import Callable, Sequence as Seq

import numpy as np

from runtime.device_sampler import RowParams
from runtime.sampling import draw_uniform
from runtime.sequence import Sequence


Sample = Callable[[RowParams], tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]


def choose_tokens(seqs: Seq[Sequence], rows: np.ndarray, size: int, params: RowParams, sample: Sample,
                  greedy: Callable[[], np.ndarray] | None, logits: Callable[[], np.ndarray]
                  ) -> tuple[list[int], int]:
    """The next token of each of `seqs`, whose step rows (of a step of `size` rows) are `rows`.

    `params` is the sampler's per-row host buffer (cleared and set here); `sample` runs the
    device sampler on the step's logits with those parameters (`DeviceSampler.run` on a
    bucket, or `run_on` an eager step's buffer) and returns (tokens, logprobs, fallback) of
    the `size` rows; `greedy` returns the engine's argmax of the rows as a host array (size,),
    or is None for an engine without it; `logits` returns the step's logits on the host
    (size, V), called only when some row needs them. Returns the tokens and how many rows were
    chosen on the host."""
    params.clear()
    host_rows: list[int] = []
    uniforms = np.full(len(seqs), np.nan)  # drawn for rows the device samples
    for i, seq in enumerate(seqs):
        if seq.params.needs_host:
            host_rows.append(i)  # penalties, logit bias, logprobs: the host applies them
        elif seq.params.temperature == 0 and not seq.params.min_tokens:
            continue  # greedy: the cleared row already says so
        elif seq.suppressing():
            host_rows.append(i)  # EOS masked out until min_tokens: the host applies it
        elif seq.params.temperature > 0:
            uniforms[i] = draw_uniform(seq.rng)
            params.set(int(rows[i]), seq.params, uniforms[i])
    if greedy is not None and params.greedy(size):  # the engine's argmax: no sampler run
        tokens, fallback = greedy(), None
    else:
        tokens, _, fallback = sample(params)
    out = tokens[rows].tolist()
    if fallback is not None:
        host_rows += [i for i in np.nonzero(fallback[rows])[0].tolist() if i not in host_rows]
    if host_rows:
        host_logits = logits()
        for i in host_rows:
            seq = seqs[i]
            u = None if seq.suppressing() or np.isnan(uniforms[i]) else float(uniforms[i])
            out[i] = seq.choose(host_logits[rows[i]], u)
    return out, len(host_rows)


def choose_packed(prefill: Seq[tuple[Sequence, int, int]], decode: Seq[Sequence], params: RowParams,
                  sample: Sample, greedy: Callable[[], np.ndarray] | None, logits: Callable[[], np.ndarray]
                  ) -> tuple[list[int | None], list[int], int]:
    """Tokens of an eager packed step (paged layout): row i of its outputs is prefill chunk i,
    then the decodes. A token is chosen for every decoding sequence and every chunk that ends
    its sequence's prompt (None for the other chunks: their logits are not a next token, and no
    random number is drawn for them), on the device where it can be (`choose_tokens`).

    Returns the chunks' entries, the decodes' tokens, and how many rows the host chose."""
    due = [i for i, (seq, _, end) in enumerate(prefill) if end == seq.num_tokens]
    due += range(len(prefill), len(prefill) + len(decode))
    if not due:  # only chunks in the middle of their prompts
        return [None] * len(prefill), [], 0
    seqs = [seq for seq, _, _ in prefill] + list(decode)
    tokens, on_host = choose_tokens([seqs[i] for i in due], np.asarray(due, np.int64), len(seqs), params,
                                    sample, greedy, logits)
    rows: list[int | None] = [None] * len(seqs)
    for i, token in zip(due, tokens):
        rows[i] = token
    return rows[:len(prefill)], rows[len(prefill):], on_host
