"""benchmarks/gpu_int4_gemm_probe.py --table on run16's recorded results (H200,
benchmarks/results/gpu-decode/run16-int4-gemm-probe.jsonl): the fastest GEMM form of each linear
against cuBLAS fp16, and each shape's decode step's linears summed. Reading a results file needs no GPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_int4_gemm_probe as probe  # noqa: E402

RUN16 = ROOT / "benchmarks" / "results" / "gpu-decode" / "run16-int4-gemm-probe.jsonl"


def test_the_table_puts_the_fastest_gemm_form_beside_cublas_fp16():
    lines = [json.loads(line) for line in RUN16.read_text().splitlines() if line.strip()]
    text = probe.table(lines).splitlines()
    gate_up = next(line for line in text if line.split()[:3] == ["1b", "gate_up", "64"])
    assert gate_up.split()[3:] == ["20.8", "-", "38.7", "mma-int4-c0", "1.86"]
    lm_head = next(line for line in text if line.split()[:3] == ["8b", "lm_head", "16"])
    assert lm_head.split()[-2:] == ["mma-int4-c1", "0.66"]  # int4 faster there
    # 16 layers' q/k/v, o, gate/up and down and one lm_head: 16 x 48.7 + 146.4 against 16 x 91.9 + 185.1
    assert "1b 64 rows, a step's linears (16 layers and the lm_head): fp16 925 us, best mma 1656 us (1.79x)" in text


def test_a_gemm_form_timed_with_another_fill_is_named_with_it():
    rows = [{"shape": "1b", "linear": "o", "m": 64, "form": "cublas-fp16", "us": 6.0, "fill": 132},
            {"shape": "1b", "linear": "o", "m": 64, "form": "mma-int4-c0", "us": 9.0, "fill": 132},
            {"shape": "1b", "linear": "o", "m": 64, "form": "mma-int4-c0", "us": 5.4, "fill": 264}]
    assert probe.table(rows).splitlines()[1].split()[-2:] == ["mma-int4-c0@264", "0.90"]


def test_a_linear_without_a_gemm_form_shows_dashes():
    text = probe.table([{"shape": "1b", "linear": "o", "m": 8, "form": "cublas-fp16", "us": 6.0}])
    assert text.splitlines()[1].split() == ["1b", "o", "8", "6.0", "-", "-", "-"]
