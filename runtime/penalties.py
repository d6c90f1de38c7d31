"""Logit adjustments a request asks for, as pure functions over a (V,) logits vector.

Applied in this order before min_tokens' suppression and temperature / top-k / top-p:

- `logit_bias` (OpenAI): a bias added to the listed tokens' logits (-100 bans a token in
  practice, +100 all but forces it);
- `repetition_penalty` (vLLM / HF's CTRL penalty, 1 = off): every token already in the prompt
  or the output has its logit divided by the penalty where positive and multiplied by it
  where negative, so a penalty above 1 always makes it less likely;
- `frequency_penalty` and `presence_penalty` (OpenAI, -2..2): from each token's logit,
  frequency x (times it occurs in the output so far) and presence x (1 if it occurs at all)
  are subtracted. As in OpenAI and vLLM they count output tokens only, not the prompt.
"""

from __future__ import annotations

import numpy as np


def apply_logit_bias(logits: np.ndarray, bias: "tuple[tuple[int, float], ...]") -> np.ndarray:
    """A copy of the logits with each (token, bias) pair's bias added."""
    if not bias:
        return logits
    out = logits.astype(np.float64, copy=True)
    ids = np.fromiter((t for t, _ in bias), np.int64, len(bias))
    np.add.at(out, ids, np.fromiter((b for _, b in bias), np.float64, len(bias)))
    return out


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """A copy where the tokens in `seen` (ids, each once) are penalized: logit / penalty
    where positive, logit * penalty where not (penalty 1: unchanged)."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    out = logits.astype(np.float64, copy=True)
    picked = out[seen]
    with np.errstate(over="ignore"):  # a penalty near 0 sends logits to +-inf (runtime.sampling copes)
        out[seen] = np.where(picked > 0, picked / penalty, picked * penalty)
    return out


def apply_frequency_presence(logits: np.ndarray, ids: np.ndarray, counts: np.ndarray,
                             frequency: float, presence: float) -> np.ndarray:
    """A copy where each output token `ids[i]`, seen `counts[i]` times, loses
    frequency * counts[i] + presence from its logit."""
    if (frequency == 0.0 and presence == 0.0) or ids.size == 0:
        return logits
    out = logits.astype(np.float64, copy=True)
    out[ids] -= frequency * counts + presence * (counts > 0)
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log_softmax in float64 (the values `logprobs` reports)."""
    z = logits.astype(np.float64) - np.max(logits)
    return z - np.log(np.exp(z).sum())


def top_logprobs(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely (token, logprob) pairs, most likely first (ties: lower id first)."""
    if k <= 0:
        return []
    k = min(k, logprobs.shape[-1])
    part = np.argpartition(-logprobs, k - 1)[:k]
    order = part[np.lexsort((part, -logprobs[part]))]
    return [(int(t), float(logprobs[t])) for t in order]
