"""Perplexity, through an engine (onnxruntime) or a transformers model, with one code path.

Convention (../shared/ASSETS.md): non-overlapping windows of L tokens from the start of the
text, BOS first only where the architecture needs it, every token after the first scored:
ppl = exp(mean NLL) over N * (L - 1) predicted tokens.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from calibration.data import TextSpec, token_windows, windows_hash

LogitsFn = Callable[[np.ndarray], np.ndarray]  # (B, L) ids -> (B, L, V) logits


NLL_ROWS = 32  # positions whose float64 log-softmax is computed at once (a few MB, not 100s)


def window_nll(logits: np.ndarray, ids: np.ndarray, rows: int = NLL_ROWS) -> tuple[float, int]:
    """Summed NLL of ids[1:] under logits[:-1] (float64 log-softmax) and the token count.

    Computed `rows` positions at a time: a (512, 49152) window in float64 at once is 200 MB
    per temporary, and allocating them costs more than the arithmetic (page faults). Each
    position's value, and their sum, are the same as in one pass."""
    n = len(logits) - 1
    nll = np.empty(n)
    for a in range(0, n, rows):
        b = min(n, a + rows)
        x = logits[a:b].astype(np.float64)
        m = x.max(-1, keepdims=True)
        lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[:, 0]
        nll[a:b] = lse - x[np.arange(b - a), ids[a + 1:b + 1]]
    return float(nll.sum()), n


NLL_BLOCK_BYTES = 2 << 20  # float64 rows a scoring thread works on at once: about one core's L2 cache


def position_nll(logits: np.ndarray, targets: np.ndarray, out: np.ndarray, work: np.ndarray) -> None:
    """out[i] = NLL of targets[i] under logits[i]: the same float64 values, bit for bit, as
    window_nll's (its definition, the same operations in the same order per row), computed
    len(work) rows at a time in place in `work`, a reusable (rows, V) float64 buffer, instead
    of in new temporaries (the logits' conversion, max, shift, exp and row sums stay in cache)."""
    n = len(targets)
    block = len(work)
    for a in range(0, n, block):
        b = min(n, a + block)
        x = work[:b - a]
        np.copyto(x, logits[a:b])  # the float64 conversion (astype)
        m = x.max(-1, keepdims=True)
        picked = x[np.arange(b - a), targets[a:b]]
        np.subtract(x, m, out=x)
        np.exp(x, out=x)
        lse = (m + np.log(x.sum(-1, keepdims=True)))[:, 0]
        out[a:b] = lse - picked


class WindowScorer:
    """window_nll's result, bit for bit, faster: each window's positions split between
    `threads` threads (numpy releases the GIL in its loops), each scoring through a float64
    buffer of its own that lives as long as the scorer (position_nll). Use as a context manager."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = max(1, threads or min(8, len(os.sched_getaffinity(0))))
        self._pool = ThreadPoolExecutor(self.threads - 1) if self.threads > 1 else None
        self._work: list[np.ndarray] = []

    def __enter__(self) -> "WindowScorer":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def __call__(self, logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
        """Summed NLL of ids[1:] under logits[:-1] and the token count, as window_nll(logits, ids)."""
        n = len(logits) - 1
        vocab = logits.shape[-1]
        if not self._work or self._work[0].shape[1] != vocab:
            rows = max(1, NLL_BLOCK_BYTES // (8 * vocab))
            self._work = [np.empty((rows, vocab)) for _ in range(self.threads)]
        nll = np.empty(n)
        cuts = np.linspace(0, n, self.threads + 1).astype(int)
        parts = [(logits[a:b], ids[a + 1:b + 1], nll[a:b], work)
                 for a, b, work in zip(cuts[:-1], cuts[1:], self._work) if b > a]
        # one part per thread (one part without a pool); the first on this thread
        futures = [self._pool.submit(position_nll, *part) for part in parts[1:]]
        position_nll(*parts[0])
        for f in futures:
            f.result()
        return float(nll.sum()), n  # the sum of window_nll's array: the same pairwise order


def perplexity(logits_fn: LogitsFn, windows: np.ndarray, on_window: Callable[[], None] | None = None,
               batch: int = 1, threads: int | None = None) -> dict[str, Any]:
    """exp(mean NLL) over the windows, `batch` windows per logits_fn call, each window's NLL
    as window_nll computes it (WindowScorer, with `threads` threads) summed in window order."""
    total, count = 0.0, 0
    start = time.perf_counter()
    with WindowScorer(threads) as score:
        for k in range(0, len(windows), max(1, batch)):
            chunk = windows[k:k + max(1, batch)]
            for w, logits in zip(chunk, logits_fn(chunk)):
                nll, n = score(logits, w)
                total, count = total + nll, count + n
                if on_window is not None:
                    on_window()
    return {"perplexity": float(np.exp(total / count)), "mean_nll": total / count,
            "tokens_evaluated": count, "seconds": round(time.perf_counter() - start, 2)}


def engine_logits_fn(engine: Any) -> LogitsFn:
    return session_logits_fn(engine.session)


def session_logits_fn(session: Any) -> LogitsFn:
    """Whole-window logits from a runtime.session.DecoderSession, each window a prefill from an
    empty cache, a batch of windows in one run (runtime.executors.window_logits). The logits are
    written into one buffer reused by every call: a result is valid until the next call."""
    from runtime.executors import window_logits

    buffers: dict[tuple[int, ...], np.ndarray] = {}

    def run(ids: np.ndarray) -> np.ndarray:
        dtype, vocab = session.logits_type()
        if vocab is None:
            return window_logits(session, ids)
        if ids.shape not in buffers:
            buffers.clear()  # a batch's buffer (~100 MB per SmolLM2 window): one at a time
            buffers[ids.shape] = np.empty((*ids.shape, vocab), dtype)
        return window_logits(session, ids, buffers[ids.shape])
    return run


def torch_logits_fn(model: Any) -> LogitsFn:
    import torch

    def run(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(input_ids=torch.from_numpy(ids), use_cache=False).logits.float().numpy()
    return run


def evaluate(target: str | Path, spec: TextSpec, provider: str = "cpu", threads: int | None = None,
             quiet: bool = False, batch: int = 1) -> dict[str, Any]:
    """Perplexity of an engine directory, or of a model source (HF folder / GGUF) in transformers;
    `batch` windows per run (on the 2-core CPU 2-8 were no faster than 1: the run is compute-bound)."""
    from optimizer.core.progress import bar

    path = Path(target).expanduser()
    if (path / "manifest.json").is_file():
        from runtime import Engine

        # no 2 MiB-page promotion of the weights (runtime.hugepages): it took 1.6-2.2 s at load, and
        # the compute-bound 512-token prefills were no faster for it (SmolLM2 wiki 40x512, 2-core CPU)
        engine = Engine.load(path, provider=provider, threads=threads, huge_pages=False)
        if engine.tokenizer is None:
            from optimizer.core.errors import EngineError

            raise EngineError("this engine has no tokenizer, so text cannot be evaluated",
                              hint="rebuild it with --tokenizer")
        gen = engine.manifest["generation"]
        bos = gen["bos_token_id"] if gen.get("needs_bos") else None
        tokenizer, fn = engine.tokenizer, engine_logits_fn(engine)
        kind = f"engine (onnxruntime {engine.session.provider}, {engine.manifest['dtype']}, " \
               f"quantization {engine.manifest['quantization']['method']})"
    else:
        from optimizer.models.loader import load_model

        if threads:
            import torch

            torch.set_num_threads(threads)
        loaded = load_model(path, quiet=True)
        bos = loaded.config.bos_token_id if loaded.arch.needs_bos else None
        tokenizer, fn = loaded.tokenizer, torch_logits_fn(loaded.model)
        kind = "transformers (torch fp32)"
    windows = token_windows(tokenizer, spec, bos)
    with bar("windows", len(windows), quiet) as advance:
        result = perplexity(fn, windows, on_window=advance, batch=batch, threads=threads)
    return {"target": str(path), "evaluated_with": kind, "dataset": spec.source,
            "windows": int(windows.shape[0]), "seq_len": int(windows.shape[1]), "bos": bos is not None,
            "windows_sha256": windows_hash(windows), **result}
