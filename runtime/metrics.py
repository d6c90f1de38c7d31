"""Serving metrics in Prometheus format (prometheus_client, one registry per server)."""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5,
                    5.0, 10.0, 20.0, 40.0, 80.0)


class ServingMetrics:
    def __init__(self, window_seconds: float = 10.0) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_length = Gauge("optimizer_queue_length", "Requests waiting for cache space", registry=r)
        self.running = Gauge("optimizer_running_requests", "Requests holding cache space", registry=r)
        self.cache_usage = Gauge("optimizer_kv_cache_usage_ratio", "Fraction of KV-cache slots/blocks in use",
                                 registry=r)
        self.tokens_per_second = Gauge("optimizer_output_tokens_per_second",
                                       f"Output tokens per second over the last {window_seconds:g} s", registry=r)
        self.tokens_per_second.set_function(self._recent_rate)
        self.output_tokens = Counter("optimizer_output_tokens", "Generated tokens", registry=r)
        self.prompt_tokens = Counter("optimizer_prompt_tokens", "Prompt tokens admitted", registry=r)
        self.requests = Counter("optimizer_requests", "Finished requests", ["finish_reason"], registry=r)
        self.preemptions = Counter("optimizer_preemptions", "Sequences preempted for cache space", registry=r)
        self.prefix_queried = Counter("optimizer_prefix_cache_queried_tokens",
                                      "Prompt tokens looked up in the prefix cache", registry=r)
        self.prefix_cached = Counter("optimizer_prefix_cache_cached_tokens",
                                     "Prompt tokens found in the prefix cache (not computed)", registry=r)
        self.compiled_grammars = Gauge("optimizer_structured_output_cached_grammars",
                                       "Compiled structured-output constraints kept (an LRU; runtime.guided)",
                                       registry=r)
        self.prefix_hit_rate = Gauge("optimizer_prefix_cache_hit_rate",
                                     "Cached / queried prompt tokens since start (0 before any lookup)", registry=r)
        self.prefix_hit_rate.set_function(self._hit_rate)
        self.spec_drafted = Counter("optimizer_spec_decode_drafted_tokens",
                                    "Speculative decoding: tokens drafted for verification", registry=r)
        self.spec_accepted = Counter("optimizer_spec_decode_accepted_tokens",
                                     "Speculative decoding: drafted tokens the target kept", registry=r)
        self.decode_rows = Counter("optimizer_decode_sequence_steps",
                                   "Decode steps, counted per sequence (a batch of 4 counts 4)", registry=r)
        self.decode_tokens = Counter("optimizer_decode_tokens", "Tokens the decode steps gave", registry=r)
        self.spec_acceptance = Gauge("optimizer_spec_decode_acceptance_rate",
                                     "Accepted / drafted tokens since start (0 before any draft)", registry=r)
        self.spec_acceptance.set_function(lambda: self._ratio("accepted", "drafted"))
        self.tokens_per_step = Gauge("optimizer_decode_tokens_per_step",
                                     "Tokens per sequence per decode step since start (1 without speculation; "
                                     "0 before any step)", registry=r)
        self.tokens_per_step.set_function(lambda: self._ratio("decode_tokens", "decode_rows"))
        self.ttft = Histogram("optimizer_time_to_first_token_seconds", "Arrival to first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("optimizer_time_per_output_token_seconds",
                              "Mean time between output tokens, per request", buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("optimizer_request_latency_seconds", "Arrival to last token",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self._window = window_seconds
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()
        self._prefix_totals = (0, 0)  # prompt tokens (queried, cached) for the hit rate
        self._decode_totals = {"drafted": 0, "accepted": 0, "decode_rows": 0, "decode_tokens": 0}

    def observe_state(self, waiting: int, running: int, cache_used: int, cache_total: int) -> None:
        self.queue_length.set(waiting)
        self.running.set(running)
        self.cache_usage.set(cache_used / cache_total if cache_total else 0.0)

    def observe_tokens(self, new_tokens: int, preempted: int) -> None:
        now = time.monotonic()
        self.output_tokens.inc(new_tokens)
        self.preemptions.inc(preempted)
        if new_tokens:
            with self._lock:
                self._recent.append((now, new_tokens))
                self._forget(now)  # bounded by the window whether or not anyone scrapes /metrics

    def observe_prefix_cache(self, queried_tokens: int, cached_tokens: int) -> None:
        if not queried_tokens:
            return
        self.prefix_queried.inc(queried_tokens)
        self.prefix_cached.inc(cached_tokens)
        with self._lock:
            self._prefix_totals = (self._prefix_totals[0] + queried_tokens, self._prefix_totals[1] + cached_tokens)

    def observe_decode(self, rows: int, tokens: int, drafted: int, accepted: int) -> None:
        """A step's decoding sequences, the tokens they gained, and its speculative drafts."""
        if not rows:
            return
        self.decode_rows.inc(rows)
        self.decode_tokens.inc(tokens)
        self.spec_drafted.inc(drafted)
        self.spec_accepted.inc(accepted)
        with self._lock:
            for key, n in (("decode_rows", rows), ("decode_tokens", tokens), ("drafted", drafted),
                           ("accepted", accepted)):
                self._decode_totals[key] += n

    def _ratio(self, numerator: str, denominator: str) -> float:
        with self._lock:
            below = self._decode_totals[denominator]
            return self._decode_totals[numerator] / below if below else 0.0

    def _hit_rate(self) -> float:
        with self._lock:
            queried, cached = self._prefix_totals
        return cached / queried if queried else 0.0

    def _recent_rate(self) -> float:
        """Tokens in the last `window` seconds, per second (0 when idle)."""
        now = time.monotonic()
        with self._lock:  # the engine thread appends while a scrape reads
            self._forget(now)
            return sum(n for _, n in self._recent) / self._window

    def _forget(self, now: float) -> None:
        """Drop the steps older than the window (with the lock held)."""
        while self._recent and self._recent[0][0] < now - self._window:
            self._recent.popleft()

    def observe_finished(self, reason: str, arrival: float, first_token: float | None, finish: float | None,
                         output_tokens: int) -> None:
        self.requests.labels(finish_reason=reason).inc()
        if first_token is not None:
            self.ttft.observe(first_token - arrival)
            if finish is not None:
                self.e2e.observe(finish - arrival)
                if output_tokens > 1:
                    self.tpot.observe((finish - first_token) / (output_tokens - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
