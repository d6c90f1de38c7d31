"""benchmarks/gpu_attention_probe.py on the CPU: the torch reference the GPU session checks our
CachedAttention kernel against is itself checked here, against the op's CPU kernel (equal to
onnxruntime's GroupQueryAttention: tests/test_custom_ops_attention.py), on a decode step of rows
of different lengths written in place and on a first prefill."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_attention_probe as probe  # noqa: E402
from tests.test_custom_ops_attention import Case, run_cpu  # noqa: E402


def test_the_probes_reference_is_the_ops_cpu_kernel():
    shape = dict(heads=8, kv_heads=2, head_dim=32, layers=1)
    lengths = [9, 4, 12]
    case = Case(3, 1, lengths, heads=8, kv_heads=2, head_dim=32, capacity=12, total=12)
    cos, sin = probe.rotary_tables(48, 32)  # rows past the cache's capacity
    case.feeds["cos"], case.feeds["sin"] = cos.numpy(), sin.numpy()
    out, keys, values = run_cpu(case, "CachedAttention", True)
    want, new_k = probe.reference(torch.from_numpy(case.feeds["query"]), torch.from_numpy(case.feeds["past_key"]),
                                  torch.from_numpy(case.feeds["past_value"]), torch.tensor(lengths), cos, sin, shape)
    np.testing.assert_allclose(out.astype(np.float32), want.numpy(), atol=2e-3, rtol=2e-3)
    for row, n in enumerate(lengths):
        np.testing.assert_array_equal(keys[row, :, n - 1], new_k[row, 0].numpy())


def test_the_probes_reference_of_a_first_prefill_is_the_ops_cpu_kernel():
    shape = dict(heads=4, kv_heads=2, head_dim=32, layers=1)
    case = Case(1, 7, [7], capacity=7, total=7)
    cos, sin = probe.rotary_tables(48, 32)
    case.feeds["cos"], case.feeds["sin"] = cos.numpy(), sin.numpy()
    out, keys, values = run_cpu(case, "CachedAttention", True)
    want, new_k = probe.reference(torch.from_numpy(case.feeds["query"]), torch.from_numpy(case.feeds["past_key"]),
                                  torch.from_numpy(case.feeds["past_value"]), torch.tensor([7]), cos, sin, shape)
    np.testing.assert_allclose(out.astype(np.float32), want.numpy(), atol=2e-3, rtol=2e-3)
    np.testing.assert_array_equal(keys[0], new_k[0].transpose(0, 1).numpy())
