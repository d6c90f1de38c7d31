"""benchmarks/serving_gaps.py's split of a serving step's time into GPU busy and idle (lead, gaps
between GPU work, tail), on made-up intervals: no GPU needed."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import serving_gaps  # noqa: E402


def test_a_step_is_split_into_busy_lead_gaps_and_tail():
    work = [(5.0, 15.0, "model"), (10.0, 20.0, "copy"),  # overlapping: 15 busy, then 15 and 5
            (25.0, 40.0, "model"), (45.0, 50.0, "argmax"),
            (200.0, 210.0, "next step")]  # outside the step
    s = serving_gaps.step_gaps((0.0, 100.0), work)
    assert s["wall"] == 100.0 and s["busy"] == 35.0
    assert s["lead"] == 5.0 and s["gaps"] == 10.0 and s["tail"] == 50.0
    assert s["pairs"] == [("copy", "model", 5.0), ("model", "argmax", 5.0)]
    assert s["lead"] + s["busy"] + s["gaps"] + s["tail"] == s["wall"]


def test_work_straddling_the_step_counts_only_inside_and_an_idle_step_is_all_lead():
    s = serving_gaps.step_gaps((10.0, 20.0), [(0.0, 12.0, "a"), (18.0, 30.0, "b")])
    assert s["busy"] == 4.0 and s["lead"] == 0.0 and s["gaps"] == 6.0 and s["tail"] == 0.0
    idle = serving_gaps.step_gaps((0.0, 8.0), [(9.0, 10.0, "a")])
    assert idle == {"wall": 8.0, "busy": 0.0, "lead": 8.0, "gaps": 0.0, "tail": 0.0, "pairs": []}


def test_the_summary_gives_medians_in_ms_and_the_gap_pairs_by_time():
    steps = [serving_gaps.step_gaps((0.0, 1000.0), [(100.0, 400.0, "m"), (500.0, 900.0, "m")]),
             serving_gaps.step_gaps((0.0, 3000.0), [(100.0, 400.0, "m"), (600.0, 900.0, "c"),
                                                     (950.0, 2900.0, "m")])]
    out = serving_gaps.summarize(steps)
    assert out["steps"] == 2 and out["wall_ms"] == 2.0 and out["lead_ms"] == 0.1
    assert out["gap_pairs"][0] == {"before": "m", "after": "c", "count_per_step": 0.5, "ms_per_step": 0.1}
    assert {(p["before"], p["after"]) for p in out["gap_pairs"]} == {("m", "m"), ("m", "c"), ("c", "m")}
