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

from runtime.device_sampler import DeviceSampler, RowParams
from runtime.sampling import draw_uniform
from runtime.sequence import Sequence


def choose_tokens(seqs: Seq[Sequence], rows: np.ndarray, size: int, params: RowParams, sampler: DeviceSampler,
                  greedy: Callable[[], np.ndarray] | None, logits: Callable[[], np.ndarray]
                  ) -> tuple[list[int], int]:
    """The next token of each of `seqs`, whose step rows (of a bucket of `size`) are `rows`.

    `params` is the sampler's per-row host buffer (cleared and set here); `greedy` returns the
    engine's argmax of the bucket's rows as a host array (size,), or is None for an engine
    without it; `logits` returns the bucket's logits on the host (size, V), called only when
    some row needs them. Returns the tokens and how many rows were chosen on the host."""
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
        tokens, _, fallback = sampler.run(size, size, params)
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
