"""Structured outputs: a token mask per step from a grammar, through llguidance.

A request's constraint is a `Constraint` (kind, spec): a JSON schema, any JSON object, a
regular expression, or a choice among strings. `Guides` (one per engine) turns it into an
llguidance matcher over the engine's tokenizer: the grammar is compiled once per distinct
constraint (an LRU of compiled matchers, each request gets a copy of one), and an invalid
schema or regex is an InputError naming llguidance's complaint.

Each step, `fill_masks` computes the allowed-token bitmasks of every constrained sequence
that samples in it with one call (llguidance's executor, its own threads, the GIL released);
`runtime.llm_engine` starts it on a worker thread before the model runs, so the masks are
computed while onnxruntime computes the logits. `Guide.apply` then sets the logits of
disallowed tokens to -inf before sampling, and `Guide.consume` advances the matcher by the
chosen token. EOS is allowed exactly where the grammar may end; where it must end
(`Guide.done`), the sequence finishes.

llguidance is imported only when a constraint is used: servers without it answer such
requests with a 400 saying to install it.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from optimizer.core.errors import InputError

KINDS = ("json_schema", "json_object", "regex", "choice")
CACHE_SIZE = 256  # compiled constraints kept: ~0.1-0.3 MB each for small schemas (fuzzed ones: 0.3 on average)
JSON_OPTIONS = {"whitespace_flexible": False}  # compact JSON: no runs of whitespace to get lost in


@dataclass(frozen=True)
class Constraint:
    kind: str  # one of KINDS
    spec: str  # json_schema: the schema as JSON text; regex: the pattern; choice: a JSON list of strings

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown structured output kind {self.kind!r}", hint=f"one of {', '.join(KINDS)}")


def _llguidance() -> Any:
    try:
        import llguidance
        import llguidance.hf  # noqa: F401  (the tokenizer bridge)
    except ImportError as e:
        raise InputError("structured outputs need the llguidance package, which this server lacks",
                         hint="pip install llguidance (an abi3 wheel), then restart the server") from e
    return llguidance


def grammar(constraint: Constraint) -> str:
    """The llguidance grammar of a constraint."""
    ll = _llguidance()
    matcher = ll.LLMatcher
    if constraint.kind == "json_schema":
        try:
            schema = json.loads(constraint.spec)
        except json.JSONDecodeError as e:
            raise InputError(f"the JSON schema is not valid JSON: {e}") from e
        if not isinstance(schema, dict):
            raise InputError("the JSON schema must be a JSON object")
        try:
            return matcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        except (ValueError, TypeError) as e:  # e.g. an integer past 64 bits: "Value is not JSON serializable"
            raise InputError(f"invalid json schema: {e}") from e
    if constraint.kind == "json_object":
        return matcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
    if constraint.kind == "regex":
        return matcher.grammar_from_regex(constraint.spec)
    choices = json.loads(constraint.spec)
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise InputError("guided_choice takes a non-empty list of non-empty strings")
    return matcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))


class Guides:
    """Compiled constraints for one tokenizer (built on first use: ~1 s for a 50k vocabulary)."""

    def __init__(self, tokenizer: Any, vocab: int | None, eos_token_ids: list[int]) -> None:
        self._hf, self._vocab, self._eos = tokenizer, vocab, list(eos_token_ids)
        self._tokenizer: Any = None
        self._cache: OrderedDict[Constraint, Any] = OrderedDict()
        self._lock = threading.Lock()  # requests compile from the server's threads
        self.compiled = 0  # constraints compiled (cache misses), for tests and metrics

    def __len__(self) -> int:
        """Compiled constraints kept (at most CACHE_SIZE)."""
        return len(self._cache)

    def _lltokenizer(self) -> Any:
        if self._tokenizer is None:
            ll = _llguidance()
            if self._hf is None:
                raise InputError("structured outputs need the engine's tokenizer, and this engine has none")
            try:
                self._tokenizer = ll.hf.from_tokenizer(self._hf, n_vocab=self._vocab,
                                                       eos_token=self._eos or None)
            except ValueError as e:
                raise InputError(f"structured outputs cannot use this tokenizer: {e}") from e
        return self._tokenizer

    def guide(self, constraint: Constraint) -> "Guide":
        """A fresh guide (matcher at the start) for one sequence."""
        with self._lock:
            template = self._cache.get(constraint)
            if template is None:
                ll = _llguidance()
                tokenizer = self._lltokenizer()
                template = ll.LLMatcher(tokenizer, grammar(constraint), log_level=0)
                if template.is_error():
                    raise InputError(f"invalid {constraint.kind.replace('_', ' ')}: {template.get_error()}")
                self._cache[constraint] = template
                self.compiled += 1
                if len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(constraint)
            vocab = self._vocab or self._tokenizer.vocab_size
            return Guide(template.deep_copy(), vocab)


class Guide:
    """One sequence's matcher and its current mask."""

    def __init__(self, matcher: Any, vocab: int) -> None:
        self.matcher = matcher
        self.vocab = vocab
        self.words = (vocab + 31) // 32
        self.mask: np.ndarray | None = None  # (words,) int32 bitmask of the next token, when computed

    @property
    def done(self) -> bool:
        """The grammar is complete and admits nothing more."""
        return self.matcher.is_stopped()

    def fill(self) -> None:
        row = np.empty((1, self.words), np.int32)
        fill_masks([self], row)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """The logits with every token the grammar forbids at -inf (the mask computed now if it was not)."""
        if self.mask is None:
            self.fill()
        return masked(logits, self.mask)

    def consume(self, token: int) -> None:
        """Advance by the chosen token; GrammarError where the matcher refuses it (llguidance has
        refused a token its own mask allowed: a regex ending in a 4-byte UTF-8 character, over a
        tokenizer with byte tokens)."""
        self.mask = None
        if not self.matcher.consume_token(token):
            error = self.matcher.get_error().strip().splitlines()
            raise GrammarError(f"the grammar refused token {token}" + (f": {error[0]}" if error else ""))


class GrammarError(InputError):
    """A constrained request's grammar cannot go on: the request ends alone (runtime.sequence)."""


def masked(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of (V,) logits with the tokens whose bit is clear in `mask` ((V+31)//32 int32,
    token t at bit t % 32 of word t // 32) set to -inf."""
    allowed = np.unpackbits(mask.view(np.uint8), bitorder="little")[:logits.shape[-1]].astype(bool)
    return np.where(allowed, logits, -np.inf)


_EXECUTOR: Any = None
_EXECUTOR_LOCK = threading.Lock()


def fill_masks(guides: list[Guide], out: np.ndarray | None = None) -> None:
    """Compute every guide's next-token mask in one llguidance call (threads of its own)."""
    global _EXECUTOR
    if not guides:
        return
    ll = _llguidance()
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = ll.LLExecutor()
    words = guides[0].words
    if out is None:
        out = np.empty((len(guides), words), np.int32)
    _EXECUTOR.unsafe_compute_mask_ptr([(g.matcher, i) for i, g in enumerate(guides)], out.ctypes.data,
                                      words * 4, len(guides))
    for i, g in enumerate(guides):
        g.mask = out[i]


_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optimizer-masks")


def start_masks(guides: list[Guide]) -> Future | None:
    """`fill_masks` on a worker thread (while the model step runs); None when nothing is guided."""
    return _WORKER.submit(fill_masks, guides) if guides else None
