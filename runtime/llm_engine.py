"""The continuous-batching loop: requests in, one model iteration per `step()`, outputs out.

    engine = LLMEngine(executor, tokenizer, eos_token_ids)
    engine.add_request(prompt_ids, SamplingParams(...), on_output=callback)
    while engine.has_work:
        engine.step()

A step asks the scheduler for a plan, runs its prefill chunks and one batched decode step
through the executor (`executor.step`: separate calls, or one packed call on paged engines),
samples a token for every sequence whose logits are final, and hands each sequence's news
(new token ids, released text, finish reason) to its callback. Finished and aborted
sequences leave the scheduler and free their cache in the same step. Not thread-safe: one
thread drives it (`runtime.async_engine` adds the threading).

`prefix_caching` (on by default) asks the executor for automatic prefix caching
(runtime.cached_pools): prompt tokens already in the cache are not computed again. Greedy
output is the same either way (on batch-invariant engines: see the README's Limits).
Executors that cannot cache say why, once per session.

`speculative` (off by default; runtime.speculative) drafts up to k tokens for each decoding
sequence (prompt lookup or a draft engine) and verifies them in the same step
(`executor.verify`): a sequence then gains 1 to k+1 tokens per step, greedy output unchanged,
sampled output still following the target distribution. Executors without `verify` (the
paged layout) refuse it.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence as Seq

from optimizer.core.errors import InputError
from runtime.guided import Guides, start_masks
from runtime.multi_step import plan_steps
from runtime.sampling import SamplingParams
from runtime.scheduler import Scheduler
from runtime.sequence import Sequence
from runtime.speculative import Draft, Drafter, SpeculativeConfig, make_drafter


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    text_delta: str
    finished: bool
    finish_reason: str | None
    seq: Sequence


@dataclass
class StepStats:
    prefill_tokens: int = 0
    decode_tokens: int = 0
    new_tokens: int = 0  # sampled this step (decodes + completed prefills)
    batch_size: int = 0
    preempted: int = 0
    seconds: float = 0.0
    queried_tokens: int = 0  # prompt tokens looked up in the prefix cache
    cached_tokens: int = 0  # of which found there (not computed)
    decode_new_tokens: int = 0  # tokens the decoding sequences gained (more than one each when speculating)
    drafted_tokens: int = 0  # speculative decoding: tokens proposed for verification
    accepted_tokens: int = 0  # of which the target kept


class LLMEngine:
    def __init__(self, executor: Any, tokenizer: Any | None = None, eos_token_ids: Seq[int] = (),
                 max_running: int | None = None, prefill_chunk: int = 256, prefill_budget: int | None = None,
                 prefix_caching: bool = True, speculative: SpeculativeConfig | None = None,
                 drafter: Drafter | None = None, decode_steps: int | None = None) -> None:
        """`speculative`: speculative decoding (runtime.speculative; None: off). `drafter`
        replaces the one `speculative` names (tests, custom drafters). `decode_steps`: greedy
        decode steps per host round trip, at most the executor's (runtime.multi_step; None: the
        executor's, 8 on CUDA with captured steps; 1: every step planned by the host)."""
        if decode_steps is not None and decode_steps < 1:
            raise InputError(f"decode_steps={decode_steps}: give 1 (single steps) or more")
        self.decode_steps = decode_steps
        self.executor = executor
        self.prefix_caching = prefix_caching and _enable_prefix_caching(executor)
        self.tokenizer = tokenizer
        self.eos_token_ids = list(eos_token_ids)
        # prompt tokens per iteration: the executor's preference where it batches prefills
        prefill_budget = prefill_budget or getattr(executor, "prefill_budget", None)
        self.scheduler = Scheduler(executor.pool, max_running or executor.max_sequences, prefill_chunk, prefill_budget,
                                   on_release=executor.release)
        self._callbacks: dict[str, Callable[[RequestOutput], None]] = {}
        self._ids = itertools.count()
        self.sequences: dict[str, Sequence] = {}  # unfinished, by request id
        self.last_step = StepStats()
        self.total_output_tokens = 0
        self.total_queried_tokens = self.total_cached_tokens = 0  # prefix cache, since start
        # executors that choose decode tokens on the device (runtime.graph_executor) return ids
        self.samples_on_device = bool(getattr(executor, "samples_on_device", False))
        self.speculative = speculative
        self.drafter = None
        if speculative is not None:
            _enable_speculation(executor, speculative.num_tokens)
            self.drafter = drafter or make_drafter(speculative, executor)
        # speculative decoding, since start: decode sequence-steps, the tokens they gave, drafts
        self.total_decode_rows = self.total_decode_tokens = 0
        self.total_drafted_tokens = self.total_accepted_tokens = 0
        session = getattr(executor, "session", None)
        self.guides = Guides(tokenizer, session.logits_type()[1] if session is not None else None,
                             self.eos_token_ids)  # structured outputs' compiled grammars

    # -- requests --------------------------------------------------------------------------
    def max_tokens(self) -> int:
        """Cache positions one request may use (prompt + output - 1)."""
        return self.scheduler.pool.max_tokens()

    def make_sequence(self, prompt_ids: Seq[int], params: SamplingParams, request_id: str | None = None,
                      detokenize: bool = True) -> Sequence:
        if len(prompt_ids) == 0:
            raise InputError("the prompt is empty", hint="pass a prompt with at least one token")
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self.sequences:
            raise InputError(f"request id {request_id!r} is already running")
        tokenizer = self.tokenizer if detokenize or params.stop else None
        if params.stop and tokenizer is None:
            raise InputError("stop strings need the engine's tokenizer, and this engine has none")
        seq = Sequence(request_id, list(prompt_ids), params, self.eos_token_ids, tokenizer)
        if params.constraint is not None:
            seq.guide = self.guides.guide(params.constraint)  # InputError for an invalid schema / regex
        if not self.scheduler.fits(seq):
            raise InputError(f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_new_tokens}) "
                             f"needs {seq.max_total_tokens} cache positions; this engine holds {self.max_tokens()} "
                             "per request", hint="shorten the prompt or lower max_tokens")
        return seq

    def add_request(self, prompt_ids: Seq[int], params: SamplingParams, request_id: str | None = None,
                    on_output: Callable[[RequestOutput], None] | None = None, detokenize: bool = True) -> Sequence:
        seq = self.make_sequence(prompt_ids, params, request_id, detokenize)
        self.add_sequence(seq, on_output)
        return seq

    def add_sequence(self, seq: Sequence, on_output: Callable[[RequestOutput], None] | None = None) -> None:
        self.scheduler.add(seq)
        self.sequences[seq.request_id] = seq
        if on_output is not None:
            self._callbacks[seq.request_id] = on_output

    def abort(self, request_id: str) -> bool:
        """Stop a request now and free its cache; False if it is unknown or already finished."""
        seq = self.sequences.get(request_id)
        if seq is None:
            return False
        seq.abort()
        self._finish(seq, [], "")
        return True

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    # -- one iteration -----------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        start = time.perf_counter()
        plan = self.scheduler.schedule()
        outputs: list[RequestOutput] = []
        stats = StepStats(preempted=len(plan.preempted), batch_size=len(plan.decode),
                          queried_tokens=plan.queried_tokens, cached_tokens=plan.cached_tokens)
        if plan.prefix_loads:
            self.executor.load_prefixes(plan.prefix_loads)
        # structured outputs: this step's masks computed on a worker thread while the model runs
        masks = start_masks([s.guide for s in plan.decode if s.guide is not None]
                            + [s.guide for s, _, end in plan.prefill if s.guide is not None and end == s.num_tokens])
        drafts = self._draft(plan.decode) if self.drafter is not None and plan.decode else None
        rounds = self._decode_steps(plan) if drafts is None else 1
        if drafts is not None:  # the decodes are a verification step (after the prefill chunks)
            prefill_rows, _ = self.executor.step(plan.prefill, [])
        elif rounds > 1:  # k greedy steps queued at once (runtime.multi_step)
            prefill_rows, decode_rows = [], self.executor.decode_rounds(plan.decode, rounds)
        elif self.samples_on_device:  # decode tokens chosen on the device; a prefill row is a
            # token id where the device chose it, else its logits for the host to choose from
            prefill_rows, decode_rows = self.executor.step_tokens(plan.prefill, plan.decode)
        else:
            prefill_rows, decode_rows = self.executor.step(plan.prefill, plan.decode)
        if masks is not None:
            masks.result()
        for (seq, begin, end), row in zip(plan.prefill, prefill_rows):
            seq.num_computed = end
            stats.prefill_tokens += end - begin
            if end == seq.num_tokens:  # the whole sequence is in the cache: its next token is due
                outputs.append(self._advance(seq, row if isinstance(row, int) else seq.choose(row)))
        if drafts is not None:
            verified = self.executor.verify(plan.decode, [d.tokens for d in drafts])
            for seq, draft, logits in zip(plan.decode, drafts, verified):
                outputs.append(self._speculated(seq, draft, logits, stats))
            stats.decode_tokens = len(plan.decode)
        elif rounds > 1:
            outputs += [self._advance_many(seq, tokens) for seq, tokens in zip(plan.decode, decode_rows)]
            stats.decode_tokens = len(plan.decode)
        elif plan.decode:
            for seq, row in zip(plan.decode, decode_rows):
                seq.num_computed += 1
                outputs.append(self._advance(seq, row if self.samples_on_device else seq.choose(row)))
            stats.decode_tokens = len(plan.decode)
        stats.new_tokens = sum(len(o.new_token_ids) for o in outputs)
        if plan.decode:
            stats.decode_new_tokens = sum(len(o.new_token_ids) for o in outputs[len(outputs) - len(plan.decode):])
        if self.drafter is not None:
            self.total_decode_rows += len(plan.decode)
            self.total_decode_tokens += stats.decode_new_tokens
            self.total_drafted_tokens += stats.drafted_tokens
            self.total_accepted_tokens += stats.accepted_tokens
        self.total_queried_tokens += stats.queried_tokens
        self.total_cached_tokens += stats.cached_tokens
        stats.seconds = time.perf_counter() - start
        self.last_step = stats
        return outputs

    def _advance(self, seq: Sequence, token: int) -> RequestOutput:
        delta = seq.append(token)
        return self._emit_tokens(seq, [token], delta)

    @property
    def max_decode_steps(self) -> int:
        """The longest round of decode steps this loop runs: the executor's (runtime.multi_step;
        1 where it queues no rounds or the host chooses the tokens), at most `decode_steps`."""
        steps = getattr(self.executor, "decode_steps", 1) if self.samples_on_device else 1
        return steps if self.decode_steps is None else min(steps, self.decode_steps)

    def _decode_steps(self, plan) -> int:
        """Decode steps this iteration's decodes run in one round (1 unless the plan is all
        greedy decodes with nobody waiting: runtime.multi_step.plan_steps)."""
        if plan.prefill:
            return 1
        return plan_steps(plan.decode, self.max_decode_steps, self.scheduler.pool, bool(self.scheduler.waiting))

    def _advance_many(self, seq: Sequence, tokens: list[int]) -> RequestOutput:
        """A round's tokens for one sequence: kept up to its end, the rest dropped."""
        kept, delta = [], ""
        for token in tokens:
            kept.append(token)
            delta += seq.append(token)
            if seq.finished:
                break
        seq.num_computed += len(kept)
        return self._emit_tokens(seq, kept, delta)

    def _emit_tokens(self, seq: Sequence, tokens: list[int], delta: str) -> RequestOutput:
        self.total_output_tokens += len(tokens)
        if seq.finished:
            return self._finish(seq, tokens, delta)
        out = RequestOutput(seq.request_id, tokens, delta, False, None, seq)
        self._emit(out)
        return out

    # -- speculative decoding ---------------------------------------------------------------
    def _draft(self, seqs: list[Sequence]) -> list[Draft] | None:
        """Drafts for the decoding sequences (None where none has one, or where more decode
        together than the config's max_batch: a plain decode step). A sequence drafts at most k
        tokens, fewer than it may still emit (the verified step adds one more), and only as many
        as its cache has room for."""
        if len(seqs) > self.speculative.max_batch:
            return None
        k = self.speculative.num_tokens
        pool = self.scheduler.pool
        ks = [max(0, min(k, s.params.max_new_tokens - len(s.output_ids) - 1)) for s in seqs]
        ks = [n if n and pool.ensure(s.request_id, s.num_tokens + n) else 0 for s, n in zip(seqs, ks)]
        if not any(ks):
            return None
        drafts = self.drafter.propose(seqs, ks)
        return drafts if any(d.tokens for d in drafts) else None

    def _speculated(self, seq: Sequence, draft: Draft, logits, stats: StepStats) -> RequestOutput:
        """Accept the longest run of drafts the target agrees with (greedy) or keeps (the
        rejection rule), plus the target's own next token; roll back the rest."""
        tokens, delta = [], ""
        for i in range(len(draft.tokens) + 1):
            proposed = draft.tokens[i] if i < len(draft.tokens) else None
            token = seq.choose(logits[i], draft=proposed,
                               q=draft.q[i] if draft.q is not None and proposed is not None else None)
            tokens.append(token)
            delta += seq.append(token)
            if token != proposed or seq.finished:
                break
        stats.drafted_tokens += len(draft.tokens)
        stats.accepted_tokens += sum(1 for t, d in zip(tokens, draft.tokens) if t == d)
        seq.num_computed = seq.num_tokens - 1  # the last token and the accepted drafts
        self.executor.rollback(seq, seq.num_computed)
        return self._emit_tokens(seq, tokens, delta)

    def _finish(self, seq: Sequence, tokens: list[int], delta: str) -> RequestOutput:
        if self.drafter is not None:
            self.drafter.release(seq)
        self.scheduler.remove(seq)  # frees its cache (the executor's share first)
        self.sequences.pop(seq.request_id, None)
        out = RequestOutput(seq.request_id, tokens, delta, True, seq.finish_reason, seq)
        self._emit(out)
        self._callbacks.pop(seq.request_id, None)
        return out

    def _emit(self, out: RequestOutput) -> None:
        callback = self._callbacks.get(out.request_id)
        if callback is not None:
            callback(out)

    def warmup(self) -> None:
        """Run the largest shapes once (a full prefill chunk, a decode step of every slot), so
        onnxruntime's memory arena has grown before the first real request is timed."""
        n = max(1, min(self.scheduler.prefill_chunk, self.max_tokens() - 1))
        params = SamplingParams(max_new_tokens=2, ignore_eos=True)
        self.run([self.make_sequence([i] * n, params, f"warmup-{i}", detokenize=False)  # distinct: none cached
                  for i in range(self.scheduler.max_running)])
        if hasattr(self.executor, "capture"):  # CUDA graphs of every decode batch bucket
            self.executor.capture()

    # -- batch helper ----------------------------------------------------------------------
    def run(self, sequences: list[Sequence]) -> list[Sequence]:
        """Add the sequences, step until all are done; return them (finished) in order."""
        for seq in sequences:
            self.add_sequence(seq)
        while any(not s.finished for s in sequences):
            self.step()
        return sequences


def _enable_speculation(executor: Any, num_tokens: int) -> None:
    """Ready the executor for verification steps; a clear error where it has none."""
    enable = getattr(executor, "enable_speculation", None)
    if enable is None or not hasattr(executor, "verify"):
        raise InputError(f"speculative decoding is not implemented for this engine's executor "
                         f"({type(executor).__name__}: the paged KV-cache layout in this version)",
                         hint="serve without --speculative, or rebuild the engine with --kv-layout static")
    reason = enable(num_tokens)
    if reason is not None:
        raise InputError(f"speculative decoding cannot run on this engine: {reason}")


def _enable_prefix_caching(executor: Any) -> bool:
    """Switch the executor's pool to prefix caching; where it cannot, say why (once per session)."""
    enable = getattr(executor, "enable_prefix_caching", None)
    if enable is None:  # e.g. test doubles
        return False
    reason = enable()
    if reason is None:
        return True
    session = getattr(executor, "session", None)
    if session is None or not session.said_no_prefix_cache:
        if session is not None:
            session.said_no_prefix_cache = True
        print(f"note: prefix caching is off for this engine: {reason}", file=sys.stderr)
    return False
