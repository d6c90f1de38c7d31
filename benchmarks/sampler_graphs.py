"""Time the device sampler's graphs against each other on the same logits: `full` (steps whose
sampled rows use the whole vocabulary) and `sample` (with the top-k / top-p candidates), on
any onnxruntime provider, rows x vocabulary shapes of your choice, every row at temperature 1.

    python benchmarks/sampler_graphs.py [--provider cpu|cuda] [--shapes 16x49152,64x49152,64x128256] \
        [--threads 2] [--runs 7]

Prints, per shape and graph, the median, minimum and maximum milliseconds of `--runs` calls
(the graphs alternating; logits, parameters and outputs bound on the provider's device, so no
copy is timed), after checking that both choose the same tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.device_sampler import RowParams  # noqa: E402
from runtime.sampler_graph import sampler_model  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def time_shape(rows: int, vocab: int, provider: str, threads: int, runs: int) -> dict:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sessions = {kind: ort.InferenceSession(sampler_model(vocab, kind).SerializeToString(), opts,
                                           providers=[PROVIDERS[provider]]) for kind in ("full", "sample")}
    rng = np.random.default_rng(0)
    params = RowParams.empty(rows)
    for r in range(rows):
        params.set(r, SamplingParams(temperature=1.0), rng.random())
    feeds = {"logits": (rng.normal(size=(rows, 1, vocab)) * 3).astype(np.float32), "temperature": params.temperature,
             "top_k": params.top_k, "top_p": params.top_p, "uniform": params.uniform}
    device = "cuda" if provider == "cuda" else "cpu"  # inputs and outputs stay where the graph runs
    values = {name: ort.OrtValue.ortvalue_from_numpy(array, device, 0) for name, array in feeds.items()}
    bindings = {}
    for kind, session in sessions.items():
        binding = session.io_binding()
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
        for out in session.get_outputs():
            binding.bind_output(out.name, device)
        bindings[kind] = binding
    tokens = {}
    for kind, session in sessions.items():  # also a warm-up
        session.run_with_iobinding(bindings[kind])
        tokens[kind] = bindings[kind].get_outputs()[0].numpy()
    if not np.array_equal(tokens["full"], tokens["sample"]):
        raise SystemExit(f"{rows}x{vocab}: the graphs chose different tokens")
    times: dict[str, list[float]] = {kind: [] for kind in sessions}
    for _ in range(runs):
        for kind, session in sessions.items():
            start = time.perf_counter()
            session.run_with_iobinding(bindings[kind])  # returns when the device is done
            times[kind].append(1e3 * (time.perf_counter() - start))
    return {kind: {"median_ms": float(np.median(t)), "min_ms": min(t), "max_ms": max(t)} for kind, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--provider", default="cpu", choices=sorted(PROVIDERS))
    ap.add_argument("--shapes", default="16x49152,64x49152,64x128256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    for shape in args.shapes.split(","):
        rows, vocab = (int(x) for x in shape.split("x"))
        result = time_shape(rows, vocab, args.provider, args.threads, args.runs)
        print(json.dumps({"shape": shape, "provider": args.provider, **result}), flush=True)


if __name__ == "__main__":
    main()
