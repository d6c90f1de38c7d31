"""The continuous-batching loop's own host work per step, without a model.

    python benchmarks/host_overhead.py [--sequences 64,256] [--prompt 128 --new 128] [--pool blocks]

A fake executor returns a token for every decoding sequence at once (as a device-sampling
executor does), so what is timed is the scheduler, the per-sequence bookkeeping and the
engine loop: the work that sits between two GPU steps. `--pool slots`: the static layout's
slots; `--pool blocks`: the paged layout's block pool (blocks of 128), the fake executor also
packing each decode step's ids, lengths and block tables as the paged graph executor does
(`pack_decode`). N sequences arrive at t=0; prints the median wall time of a step (ms) for
each N.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.kv_cache import BlockPool, SlotPool  # noqa: E402
from runtime.llm_engine import LLMEngine  # noqa: E402
from runtime.paged_graphs import pack_decode  # noqa: E402
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


class FakePagedExecutor:
    samples_on_device = True
    BLOCK = 128

    def __init__(self, sequences: int, capacity: int) -> None:
        per_sequence = -(-capacity // self.BLOCK)
        self.pool = BlockPool(sequences * per_sequence, self.BLOCK, per_sequence)
        self.max_sequences = sequences
        self.ids = np.zeros((1, sequences), np.int64)
        self.past = np.zeros(sequences, np.int32)
        self.table = np.zeros((sequences, per_sequence), np.int32)

    def release(self, seq) -> None:
        pass

    def step_tokens(self, prefill, decode):
        if decode:
            pack_decode([s.last_token for s in decode], [s.num_tokens - 1 for s in decode],
                        [self.pool.table(s.request_id) for s in decode], len(decode),
                        self.ids, self.past, self.table, self.pool.num_blocks)
        return [5] * len(prefill), ([5] * len(decode) if decode else None)


POOLS = {"slots": FakeExecutor, "blocks": FakePagedExecutor}


def step_ms(n: int, prompt: int, new: int, pool: str = "slots") -> float:
    llm = LLMEngine(POOLS[pool](n, prompt + new), None)
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
    ap.add_argument("--pool", choices=tuple(POOLS), default="slots")
    ap.add_argument("--repeat", type=int, default=1, help="runs per N (each line: one run's median step)")
    args = ap.parse_args()
    for n in (int(v) for v in args.sequences.split(",")):
        for _ in range(args.repeat):
            print(f"{n} sequences, {args.pool}: {step_ms(n, args.prompt, args.new, args.pool):.3f} ms of host "
                  "work per step (median)")


if __name__ == "__main__":
    main()
