"""benchmarks/gpu_kernels.py's step sequence (a step's kernels in launch order, each with its median
time over the steps), on made-up profiler events: no GPU needed."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_kernels  # noqa: E402


def event(name: str, start: float, us: float):
    return SimpleNamespace(name=name, time_range=SimpleNamespace(start=start), device_time_total=us)


def test_the_sequence_lists_a_steps_kernels_in_order_with_their_median_times():
    step = ["void norm<1>(Args)", "void gemm<8, 1>(Args)", "void convert(float const*)"]
    times = [[2.0, 10.0, 1.0], [3.0, 12.0, 1.5], [2.5, 11.0, 9.0]]
    events = [event(name, 100 * s + i, times[s][i]) for s in range(3) for i, name in enumerate(step)]
    events.reverse()  # the profiler's order is not the launch order
    sequence = gpu_kernels.step_sequence(events, steps=3, first=1, count=5)
    assert sequence == [{"kernel": "gemm", "us": 11.0}, {"kernel": "convert", "us": 1.5}]


def test_steps_that_ran_different_kernels_give_no_sequence():
    events = [event("a", 0, 1.0), event("b", 1, 1.0), event("a", 2, 1.0), event("c", 3, 1.0)]
    assert gpu_kernels.step_sequence(events, steps=2) == []
    assert gpu_kernels.step_sequence(events[:3], steps=2) == []  # not a whole number of steps
