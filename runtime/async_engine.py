"""A continuous-batching loop on a background thread, fed from any thread or asyncio loop.

    server = AsyncEngine(engine.llm())
    server.start()
    async for out in server.stream(prompt_ids, SamplingParams(max_new_tokens=32)):
        print(out.text_delta, end="")
    server.shutdown()

Only the loop thread touches the `LLMEngine`; other threads hand it commands (add, abort)
through a lock-protected queue. onnxruntime releases the GIL while a step runs, so the
event loop serving HTTP stays responsive. A step that raises does not kill the loop: the
requests it was running finish with reason "error" and their cache is freed (the last
`KEPT_ERRORS` tracebacks are kept in `errors`, all of them counted in `error_count`). Once the
loop has been idle for `TRIM_AFTER_IDLE_SECONDS` after work, it gives the C allocator's free
memory back to the system (optimizer.core.malloc_trim), so that resident memory follows what is in
use instead of the largest mix of requests seen so far.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
import traceback
from typing import AsyncIterator, Callable, Sequence as Seq

from runtime.llm_engine import LLMEngine, RequestOutput
from optimizer.core.malloc_trim import release_free_memory
from runtime.metrics import ServingMetrics
from runtime.sampling import SamplingParams
from runtime.sequence import Sequence

log = logging.getLogger("optimizer.runtime")

KEPT_ERRORS = 16  # tracebacks of failed steps kept (the newest)
TRIM_AFTER_IDLE_SECONDS = 1.0


class AsyncEngine:
    def __init__(self, llm: LLMEngine, metrics: ServingMetrics | None = None) -> None:
        self.llm = llm
        self.metrics = metrics or ServingMetrics()
        self.metrics.compiled_grammars.set_function(lambda: len(getattr(llm, "guides", ())))
        self._lock = threading.Condition()
        self._commands: list[tuple[str, object]] = []
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._untrimmed = False  # work done since the allocator's free memory was last given back
        self.errors: collections.deque[str] = collections.deque(maxlen=KEPT_ERRORS)  # newest tracebacks
        self.error_count = 0  # failed steps since start
        self.trims = 0  # times the idle loop gave free memory back

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "AsyncEngine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="optimizer-engine-loop", daemon=True)
            self._thread.start()
        return self

    def shutdown(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- requests (any thread) --------------------------------------------------------------
    def new_sequence(self, prompt_ids: Seq[int], params: SamplingParams, detokenize: bool = True) -> Sequence:
        """A request under a fresh id, checked: InputError when it can never run (too long, ...)."""
        with self._lock:
            request_id = f"req-{next(self._ids)}"
        return self.llm.make_sequence(prompt_ids, params, request_id, detokenize)

    def submit(self, seq: Sequence, on_output: Callable[[RequestOutput], None]) -> None:
        """Queue a request from `new_sequence`; `on_output` is called on the loop thread with each update."""
        self._command("add", (seq, on_output))

    def abort(self, request_id: str) -> None:
        self._command("abort", request_id)

    def _command(self, kind: str, payload: object) -> None:
        with self._lock:
            self._commands.append((kind, payload))
            self._lock.notify()

    async def stream(self, prompt_ids: Seq[int], params: SamplingParams,
                     detokenize: bool = True) -> AsyncIterator[RequestOutput]:
        """Updates of one request as they come; leaving the loop early aborts the request."""
        async for out in self.stream_sequence(self.new_sequence(prompt_ids, params, detokenize)):
            yield out

    async def stream_sequence(self, seq: Sequence) -> AsyncIterator[RequestOutput]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self.submit(seq, lambda out: loop.call_soon_threadsafe(queue.put_nowait, out))
        finished = False
        try:
            while not finished:
                out = await queue.get()
                finished = out.finished
                yield out
        finally:
            if not finished:
                self.abort(seq.request_id)

    async def run_sequence(self, seq: Sequence) -> Sequence:
        """Run one request to the end; the Sequence carries the tokens, text and timings."""
        async for _ in self.stream_sequence(seq):
            pass
        return seq

    # -- the loop thread --------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._commands and not self.llm.has_work and not self._stop:
                    if not self._lock.wait(TRIM_AFTER_IDLE_SECONDS if self._untrimmed else None):
                        break  # idle that long after work
                if self._stop:
                    break
                commands, self._commands = self._commands, []
            if not commands and not self.llm.has_work:
                self._untrimmed = False
                self.trims += 1
                release_free_memory()  # outside the lock: requests may arrive meanwhile
                continue
            self._untrimmed = True
            for kind, payload in commands:
                self._apply(kind, payload)
            if self.llm.has_work:
                self._step()
            self._observe()
        for seq in list(self.llm.sequences.values()):  # shutting down: end what still runs
            self.llm.abort(seq.request_id)

    def _apply(self, kind: str, payload: object) -> None:
        if kind == "add":
            seq, on_output = payload
            self.llm.add_sequence(seq, self._observed(on_output))
            self.metrics.prompt_tokens.inc(len(seq.prompt_ids))
        elif kind == "abort":
            self.llm.abort(payload)

    def _observed(self, on_output: Callable[[RequestOutput], None]) -> Callable[[RequestOutput], None]:
        def callback(out: RequestOutput) -> None:
            if out.finished:
                s = out.seq
                reason = "grammar_error" if s.error is not None else out.finish_reason or "abort"  # not the engine's
                self.metrics.observe_finished(reason, s.arrival_time, s.first_token_time, s.finish_time,
                                              len(s.output_ids))
            try:
                on_output(out)
            except Exception:  # a consumer's bug must not stop the loop
                log.exception("request %s: output callback failed", out.request_id)
        return callback

    def _step(self) -> None:
        try:
            self.llm.step()
        except Exception:
            self.errors.append(traceback.format_exc())
            self.error_count += 1
            log.error("engine step failed; ending its requests:\n%s", self.errors[-1])
            for seq in list(self.llm.sequences.values()):
                if seq in self.llm.scheduler.running:
                    seq.finish_reason, seq.finish_time = "error", time.perf_counter()
                    self.llm.abort(seq.request_id)
        stats = self.llm.last_step
        self.metrics.observe_tokens(stats.new_tokens, stats.preempted)
        self.metrics.observe_prefix_cache(stats.queried_tokens, stats.cached_tokens)
        self.metrics.observe_decode(stats.decode_tokens, stats.decode_new_tokens, stats.drafted_tokens,
                                    stats.accepted_tokens)

    def _observe(self) -> None:
        s = self.llm.scheduler
        self.metrics.observe_state(len(s.waiting), len(s.running), s.pool.used, s.pool.total)
