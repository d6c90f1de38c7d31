"""benchmarks/gpu_matmul_layout.py on the CPU: its forms of a linear (three layouts of onnxruntime's
ops, and our Linear op on its CPU kernel) compute the same product (the GPU session only times
them), with M left symbolic for one session per form; the line reporter it shares with the other
device benchmarks (benchmarks/_results.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_matmul_layout as layout  # noqa: E402


@pytest.mark.parametrize("form", layout.FORMS)
def test_every_layout_computes_x_times_w_for_any_row_count(form):
    ws = layout.weights(64, 96, 3)
    sess = ort.InferenceSession(layout.model_bytes(form, ws), layout.session_options(form, cuda=False),
                                providers=["CPUExecutionProvider"])
    for m in (1, 5):
        x = np.random.default_rng(m).standard_normal((m, 64)).astype(np.float16)
        ys = sess.run(None, {"x": x})
        assert len(ys) == 3
        for y, w in zip(ys, ws):
            assert y.shape == (m, 96) and y.dtype == np.float16
            np.testing.assert_allclose(y.astype(np.float32), x.astype(np.float32) @ w.astype(np.float32),
                                       atol=2e-3, rtol=2e-2)


def test_the_copies_hold_distinct_weights():
    ws = layout.weights(32, 16, 2)
    assert not np.array_equal(ws[0], ws[1])


def test_report_line_prints_the_row_and_appends_it_as_json(tmp_path, capsys):
    import json

    from _results import report_line

    path = tmp_path / "r.jsonl"
    report_line({"linear": "qkv", "us": 7.5}, path)
    report_line({"linear": "o", "us": 7.0}, path)
    report_line({"linear": "down"})  # no file: printed only
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"linear": "qkv", "us": 7.5},
                                                                      {"linear": "o", "us": 7.0}]
    assert [json.loads(x)["linear"] for x in capsys.readouterr().out.splitlines()] == ["qkv", "o", "down"]
