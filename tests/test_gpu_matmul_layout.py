"""benchmarks/gpu_matmul_layout.py on the CPU: its three layouts of a linear compute the same
product (the GPU session only times them), with M left symbolic for one session per form."""

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
    sess = ort.InferenceSession(layout.model_bytes(form, ws), providers=["CPUExecutionProvider"])
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
