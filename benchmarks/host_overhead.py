"""The continuous-batching loop's own host work per step, without a model.

    python benchmarks/host_overhead.py [--sequences 64,256] [--prompt 128 --new 128]

A fake executor returns a token for every decoding sequence at once (as a device-sampling
executor does), so what is timed is the scheduler, the per-sequence bookkeeping and the
engine loop: the work that sits between two GPU steps. N sequences arrive at t=0; prints the
median wall time of a step (ms) for each N.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.kv_cache import SlotPool  # noqa: E402
from runtime.llm_engine import LLMEngine  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402


class FakeExecutor:
    samples_on_device = True

    def __init__(self, slots: int, capacity: int) -> None:
        self.pool = SlotPool(slots, capacity)
        self.max_sequences = slots

    def release(self, seq) -> None:
        pass

    def step_tokens(self, prefill, decode):
        return [np.zeros(8, np.float32) for _ in prefill], ([5] * len(decode) if decode else None)


def step_ms(n: int, prompt: int, new: int) -> float:
    llm = LLMEngine(FakeExecutor(n, prompt + new), None)
    params = SamplingParams(max_new_tokens=new, ignore_eos=True)
    for _ in range(n):
        llm.add_request(list(range(100, 100 + prompt)), params, detokenize=False)
    steps = []
    while llm.has_work:
        t0 = time.perf_counter()
        llm.step()
        steps.append(time.perf_counter() - t0)
    return statistics.median(steps) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sequences", default="64,256")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    args = ap.parse_args()
    for n in (int(v) for v in args.sequences.split(",")):
        print(f"{n} sequences: {step_ms(n, args.prompt, args.new):.3f} ms of host work per step (median)")


if __name__ == "__main__":
    main()
