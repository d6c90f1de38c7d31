"""Next-token selection as pure functions over a logits vector.

Greedy when temperature is 0; otherwise temperature, then top-k, then top-p (nucleus)
filtering, then a draw from a seeded numpy Generator (same seed, same tokens).

A draw is one uniform number u per token (`draw_uniform`) and an inverse-CDF lookup in
vocabulary order (`sample_from_uniform`), which is what `Generator.choice(p=...)` does, so
seeded outputs are those of `rng.choice`. The GPU sampler (`runtime.device_sampler`) takes
the same u from the host and does the same lookup on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from optimizer.core.errors import InputError
from runtime.guided import Constraint


MAX_LOGPROBS = 20  # most likely tokens reported per position at most (OpenAI's top_logprobs limit)


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    stop: tuple[str, ...] = field(default_factory=tuple)  # stop strings (not part of the output text)
    min_tokens: int = 0  # EOS and stop tokens cannot end the output before this many tokens
    # logit adjustments (runtime.penalties); defaults leave the logits as they are
    presence_penalty: float = 0.0  # -2..2, output tokens only
    frequency_penalty: float = 0.0  # -2..2, output tokens only
    repetition_penalty: float = 1.0  # > 0; 1 = off; prompt and output tokens
    logit_bias: tuple[tuple[int, float], ...] = field(default_factory=tuple)  # (token id, -100..100)
    logprobs: int | None = None  # None: none recorded; k >= 0: the chosen token's and the k most likely
    constraint: Constraint | None = None  # structured output (runtime.guided): a token mask per step

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_tokens <= self.max_new_tokens:
            raise InputError(f"min_tokens must be in [0, max_new_tokens={self.max_new_tokens}], got {self.min_tokens}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InputError("stop strings must be non-empty strings", hint=f"got {list(self.stop)!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise InputError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if not self.repetition_penalty > 0:
            raise InputError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if any(not -100.0 <= b <= 100.0 for _, b in self.logit_bias):
            raise InputError("logit_bias values must be in [-100, 100]", hint=f"got {dict(self.logit_bias)!r}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise InputError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")

    @property
    def adjusts_logits(self) -> bool:
        """Whether penalties or a logit bias change the logits before sampling."""
        return bool(self.logit_bias or self.presence_penalty or self.frequency_penalty
                    or self.repetition_penalty != 1.0)

    @property
    def needs_host(self) -> bool:
        """Whether each token must be chosen on the host from the full logits (the device
        sampler takes temperature / top-k / top-p only)."""
        return self.adjusts_logits or self.logprobs is not None or self.constraint is not None


def filter_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Logits with all but the k largest set to -inf (k = 0 or >= V: unchanged)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits < kth, -np.inf, logits)


NUCLEUS_THRESHOLDS = (1e-4, 1e-6)  # probabilities above which the nucleus is looked for first


def filter_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probability reaches p (at least one):
    the tokens in order of decreasing logit (ties by index), each kept while the mass strictly
    before it is below p.

    The nucleus of a language model's distribution is usually a few dozen tokens, so it is
    looked for first among the tokens of probability above a threshold (at most 1 / threshold
    of them, each more likely than every token left out): where the nucleus ends inside that
    set, the other tokens cannot be in it. Only where it does not is the whole vocabulary
    sorted (`filter_top_p_sorted`). Both give the same tokens; the probabilities' normalizer is
    summed in vocabulary rather than sorted order (float rounding, ~1e-16)."""
    if p >= 1.0:
        return logits
    x = logits.astype(np.float64)
    e = np.exp(x - np.max(x))
    total = e.sum()
    for threshold in NUCLEUS_THRESHOLDS:
        candidates = np.flatnonzero(e > threshold * total)  # e_i > e_j for every j left out: x_i > x_j
        if not len(candidates):  # a flat distribution: no token is that likely
            continue
        order = candidates[np.lexsort((candidates, -x[candidates]))]  # decreasing logit, ties by index
        probs = e[order] / total
        keep_sorted = (np.cumsum(probs) - probs) < p
        if not keep_sorted[-1]:  # the nucleus ends inside the candidates
            out = np.full_like(logits, -np.inf)
            kept = order[keep_sorted]
            out[kept] = logits[kept]
            return out
    return filter_top_p_sorted(logits, p)


def filter_top_p_sorted(logits: np.ndarray, p: float) -> np.ndarray:
    """`filter_top_p` by sorting the whole vocabulary (its definition, and its fallback)."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, kind="stable")
    probs = softmax(logits[order])
    # a token is kept if the mass strictly before it is still below p
    keep_sorted = (np.cumsum(probs) - probs) < p
    keep = np.zeros_like(keep_sorted)
    keep[order] = keep_sorted
    return np.where(keep, logits, -np.inf)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.asarray(logits, np.float64) - np.max(logits)  # a new array: the rest works in place
    np.exp(e, out=e)
    e /= e.sum()
    return e


def suppress(logits: np.ndarray, token_ids: "set[int] | frozenset[int]") -> np.ndarray:
    """A copy of (V,) logits where `token_ids` cannot be chosen (min_tokens before EOS)."""
    ids = [t for t in token_ids if 0 <= t < logits.shape[-1]]
    if not ids:
        return logits
    out = logits.copy()
    out[ids] = -np.inf
    return out


# the largest float32 below 1: u * total stays below total in float32 arithmetic too
U_MAX = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


def draw_uniform(rng: np.random.Generator) -> float:
    """The uniform number in [0, 1) a sampled token consumes (the one `rng.choice` draws)."""
    return min(rng.random(), U_MAX)


def sample_from_uniform(probs: np.ndarray, u: float) -> int:
    """Inverse CDF in vocabulary order: the first index whose cumulative mass exceeds u * total."""
    cdf = np.cumsum(probs)
    cdf /= cdf[-1]
    return int(min(np.searchsorted(cdf, u, side="right"), probs.shape[-1] - 1))


def sampling_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The (V,) float64 distribution a sampled token is drawn from: temperature, top-k, top-p.
    Where a logit is +inf (a penalty that overflowed) the distribution is softmax's limit, even
    over those tokens; where dividing by a tiny temperature overflows, the logits are shifted
    by their maximum first (the same distribution, computed without infinities)."""
    logits = np.asarray(logits, np.float64)
    with np.errstate(over="ignore"):
        scaled = logits / params.temperature  # a new array: the caller's logits stay as they are
        if scaled.max() == np.inf:
            if np.isposinf(logits).any():
                return softmax(np.where(np.isposinf(logits), 0.0, -np.inf))
            scaled = (logits - np.max(logits)) / params.temperature
    return softmax(filter_top_p(filter_top_k(scaled, params.top_k), params.top_p))


def sample_next(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
                u: float | None = None) -> int:
    """One token id from a (V,) logits vector (`u`: an already drawn uniform, else one is drawn)."""
    if params.temperature == 0.0:
        return int(np.argmax(logits))
    return sample_from_uniform(sampling_probs(logits, params), draw_uniform(rng) if u is None else u)


def residual(p: np.ndarray, q: np.ndarray | None, draft: int) -> np.ndarray:
    """norm(max(0, p - q)) unnormalized: what a rejected draft's token is drawn from (q None:
    the point mass at `draft`, so p without it)."""
    if q is None:
        out = p.copy()
        out[draft] = 0.0
        return out
    return np.maximum(p - q, 0.0)


def accept_or_resample(p: np.ndarray, draft: int, q: np.ndarray | None, rng: np.random.Generator) -> int:
    """The rejection rule for one drafted token: `draft` with probability min(1, p/q), else a
    token from the residual. The result follows p whenever `draft` was drawn from q."""
    q_draft = 1.0 if q is None else float(q[draft])
    if rng.random() * q_draft < p[draft]:
        return draft
    rest = residual(p, q, draft)
    if rest.sum() <= 0.0:  # p == q up to rounding: the draft was as good as certain to stay
        return draft
    return sample_from_uniform(rest, draw_uniform(rng))
