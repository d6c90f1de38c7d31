"""Perplexity, through an engine (onnxruntime) or a transformers model, with one code path.

Convention (../shared/ASSETS.md): non-overlapping windows of L tokens from the start of the
text, BOS first only where the architecture needs it, every token after the first scored:
ppl = exp(mean NLL) over N * (L - 1) predicted tokens.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from calibration.data import TextSpec, token_windows, windows_hash

LogitsFn = Callable[[np.ndarray], np.ndarray]  # (1, L) ids -> (1, L, V) logits


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


def perplexity(logits_fn: LogitsFn, windows: np.ndarray,
               on_window: Callable[[], None] | None = None) -> dict[str, Any]:
    total, count = 0.0, 0
    start = time.perf_counter()
    for w in windows:
        nll, n = window_nll(logits_fn(w[None])[0], w)
        total, count = total + nll, count + n
        if on_window is not None:
            on_window()
    return {"perplexity": float(np.exp(total / count)), "mean_nll": total / count,
            "tokens_evaluated": count, "seconds": round(time.perf_counter() - start, 2)}


def engine_logits_fn(engine: Any) -> LogitsFn:
    return session_logits_fn(engine.session)


def session_logits_fn(session: Any) -> LogitsFn:
    """Whole-window logits from a runtime.session.DecoderSession (a prefill from an empty cache)."""
    from runtime.executors import probe_logits

    def run(ids: np.ndarray) -> np.ndarray:
        return probe_logits(session, ids[0].tolist(), ids.shape[1])[None]
    return run


def torch_logits_fn(model: Any) -> LogitsFn:
    import torch

    def run(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(input_ids=torch.from_numpy(ids), use_cache=False).logits.float().numpy()
    return run


def evaluate(target: str | Path, spec: TextSpec, provider: str = "cpu", threads: int | None = None,
             quiet: bool = False) -> dict[str, Any]:
    """Perplexity of an engine directory, or of a model source (HF folder / GGUF) in transformers."""
    from optimizer.core.progress import bar

    path = Path(target).expanduser()
    if (path / "manifest.json").is_file():
        from runtime import Engine

        engine = Engine.load(path, provider=provider, threads=threads)
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
        result = perplexity(fn, windows, on_window=advance)
    return {"target": str(path), "evaluated_with": kind, "dataset": spec.source,
            "windows": int(windows.shape[0]), "seq_len": int(windows.shape[1]), "bos": bos is not None,
            "windows_sha256": windows_hash(windows), **result}
