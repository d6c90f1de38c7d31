"""The fast paths of AWQ and GPTQ against the reference math they replace: each computes what
the straightforward form computes, up to float rounding (issue 24, item 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibration import awq, gptq
from calibration.gptq import (HessianAccumulator, add_gram_, gptq_quantize, gptq_quantize_shared,
                              inverse_cholesky, lower_triangular_inverse, sweep_columns)
from calibration.methods.awq import block_loss, linear_loss, spread_rows
from calibration.methods.hooks import capture_calls, observe_shared_inputs
from calibration.rtn import QuantSpec, compute_qparams, to_groups
from calibration.sequential import LayerWork

SPEC = QuantSpec(4, 32, False)


def correlated(n_tokens: int, n_in: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tokens, n_in, generator=g) @ (torch.randn(n_in, n_in, generator=g) / n_in ** 0.5)
    x[:, :3] *= 8  # a few large channels, as in real activations
    return x


# --- GPTQ -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_in,block", [(40, 1024), (100, 16), (96, 32)])  # one addmm; blocks; exact blocks
def test_add_gram_is_x_transpose_x(n_in, block):
    x = torch.randn(300, n_in, dtype=torch.float64)
    H = torch.randn(n_in, n_in, dtype=torch.float64)
    H = H + H.T
    expected = H + 0.5 * x.T @ x
    add_gram_(H, x, 0.5, block=block)
    assert torch.allclose(H, expected, rtol=1e-12, atol=1e-12)


def test_hessian_of_wide_inputs_matches_definition():
    x = correlated(500, 2100)  # wider than two blocks: the half-product path
    acc = HessianAccumulator(2100)
    for chunk in x.split(200):
        acc.add(chunk)
    ref = 2.0 * x.double().T @ x.double() / 500
    assert torch.allclose(acc.H.double(), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_inverse_cholesky_is_the_upper_factor_of_the_inverse():
    x = correlated(400, 64)
    H = (2 * x.T @ x / 400).double()
    damped = H + 0.01 * H.diagonal().mean() * torch.eye(64, dtype=torch.float64)
    reference = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)
    got = inverse_cholesky(H.clone(), 0.01)
    assert torch.allclose(got, reference, rtol=1e-9, atol=1e-12)
    assert torch.equal(got, got.triu())


def reference_act_order(W: np.ndarray, H: np.ndarray, spec: QuantSpec, damp: float = 0.01) -> np.ndarray:
    """GPTQ with act-order and static groups in float64, column by column with the full
    inverse Hessian: columns in decreasing diag(H) order, each rounded with its (contiguous,
    original-order) group's parameters from the original weights. Dequantized weights."""
    g = spec.group_width(W.shape[1])
    scale, zero = (t.double().numpy() for t in compute_qparams(to_groups(torch.from_numpy(W), g), spec))
    perm = np.argsort(-np.diag(H), kind="stable")
    W, H = W[:, perm].astype(np.float64), H[perm][:, perm].astype(np.float64)
    H = H + damp * np.mean(np.diag(H)) * np.eye(len(H))
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T
    Q = np.zeros_like(W)
    for j in range(W.shape[1]):
        group = perm[j] // g
        q = np.clip(np.round(W[:, j] / scale[:, group]) + zero[:, group], 0, spec.qmax)
        Q[:, j] = (q - zero[:, group]) * scale[:, group]
        W[:, j:] -= np.outer((W[:, j] - Q[:, j]) / Hinv[j, j], Hinv[j, j:])
    return Q[:, np.argsort(perm)]


@pytest.mark.parametrize("symmetric", [True, False])
def test_act_order_matches_float64_reference(symmetric):
    torch.manual_seed(4)
    W = torch.randn(24, 160) * 0.05  # 160 = 5 groups of 32, two blocks of 128 (the second narrower)
    x = correlated(2048, 160, seed=5)
    H = 2 * x.T @ x / len(x)
    spec = QuantSpec(4, 32, symmetric)
    got = gptq_quantize(W, H, spec, act_order=True).dequantize().numpy()
    ref = reference_act_order(W.numpy(), H.numpy(), spec)
    rows_same = np.isclose(got, ref, rtol=0, atol=1e-6).all(axis=1)  # a rare tie flip changes a row
    assert rows_same.sum() >= len(rows_same) - 1


def test_sub_blocked_sweep_is_the_column_by_column_sweep():
    """sweep_columns with sub-blocks applies the same updates as the plain sweep, in float64:
    every row `rounded` reads holds the same values, and the codes and final W agree."""
    torch.manual_seed(15)
    x = correlated(512, 100, seed=16).double()
    Hinv = torch.linalg.cholesky(torch.linalg.inv(x.T @ x / 512 + 0.01 * torch.eye(100, dtype=torch.float64))).T
    W = torch.randn(100, 30, dtype=torch.float64) * 0.05  # WT: (in, out)

    def run(sub_block):
        WT, seen = W.clone(), []

        def rounded(col, i, W1, _WT):
            seen.append(W1[i:i + 16 - i % 16].clone())  # the rest of the row's sub-block, as read now
            return torch.round(W1[i] * 20) / 20

        sweep_columns(WT, Hinv, 32, rounded, sub_block)  # blocks of 32, the last one of 4 columns
        return WT, seen

    (ref, ref_seen), (got, got_seen) = run(None), run(16)
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(got_seen, ref_seen))


def test_the_integer_sweep_by_sub_blocks_is_sweep_columns_with_gptqs_rounding():
    """calibration.gptq_sweep (what GPTQ runs, captured as CUDA graphs on a GPU) computes
    operation for operation what sweep_columns computes with gptq_quantize's rounding: the same
    codes and the same final W, bit for bit, with blocks of 32 and a last block of 4 columns."""
    from calibration.gptq_sweep import IntSubBlocks

    torch.manual_seed(19)
    x = correlated(512, 100, seed=20)
    Hinv = torch.linalg.cholesky(torch.linalg.inv(x.T @ x / 512 + 0.01 * torch.eye(100))).T.contiguous()
    W = torch.randn(100, 30) * 0.05  # WT: (in, out)
    group_of = [c // 16 for c in range(100)]
    scale = torch.rand(7, 30) * 0.01 + 0.005
    zero = torch.randint(0, 16, (7, 30)).float()

    def reference():
        WT, QT = W.clone(), torch.empty_like(W)

        def rounded(col, i, W1, _WT):
            q, s, z = QT[col], scale[group_of[col]], zero[group_of[col]]
            torch.div(W1[i], s, out=q).round_().add_(z).clamp_(0, 15)
            return (q - z) * s

        sweep_columns(WT, Hinv, 32, rounded, 16)
        return WT, QT

    WT, QT = W.clone(), torch.empty_like(W)
    sweep_columns(WT, Hinv, 32, None, 16, IntSubBlocks(QT, scale, zero, group_of, 15))  # whole sub-blocks
    ref_WT, ref_QT = reference()
    assert torch.equal(QT, ref_QT) and torch.equal(WT, ref_WT)


@pytest.mark.parametrize("act_order,symmetric", [(False, True), (False, False), (True, False)])
def test_gptq_codes_with_and_without_sub_blocks(monkeypatch, act_order, symmetric):
    torch.manual_seed(17)
    x = correlated(2048, 192, seed=18)
    H = 2 * x.T @ x / len(x)
    W = torch.randn(48, 192) * 0.05
    spec = QuantSpec(4, 32, symmetric)
    fast = gptq_quantize(W, H, spec, act_order=act_order)
    monkeypatch.setattr(gptq, "SUB_BLOCK", None)
    plain = gptq_quantize(W, H, spec, act_order=act_order)
    assert (fast.qweight == plain.qweight).float().mean() > 0.999  # float rounding may flip a tie
    assert torch.allclose(fast.scales, plain.scales, rtol=1e-5) and torch.equal(fast.zeros, plain.zeros)


@pytest.mark.parametrize("act_order", [False, True])
def test_shared_hessian_stacking_equals_one_at_a_time(act_order):
    torch.manual_seed(6)
    x = correlated(1024, 96, seed=7)
    H = 2 * x.T @ x / len(x)
    weights = [torch.randn(40, 96) * 0.05, torch.randn(8, 96) * 0.05, torch.randn(16, 96) * 0.05]
    stacked = gptq_quantize_shared(weights, H, SPEC, act_order=act_order)
    for w, q in zip(weights, stacked):
        alone = gptq_quantize(w, H, SPEC, act_order=act_order)
        assert q.qweight.shape == w.shape and q.scales.shape == alone.scales.shape
        rows_same = (q.qweight == alone.qweight).all(dim=1)
        assert rows_same.sum() >= len(rows_same) - 1  # float rounding of the block updates
        assert torch.allclose(q.scales, alone.scales) and torch.equal(q.zeros, alone.zeros)


# --- AWQ --------------------------------------------------------------------------------------

def test_linear_output_error_equals_the_output_difference():
    torch.manual_seed(8)
    x = correlated(500, 64).double()
    W = torch.randn(24, 64, dtype=torch.float64) * 0.05
    s = awq.candidate_scales(x.abs().mean(0), torch.rand(64, dtype=torch.float64) + 0.1, 0.4)
    Ws = awq.scaled_fake_quant(W, s, SPEC)
    direct = float((x @ Ws.T - x @ W.T).pow(2).sum())
    assert awq.linear_output_error(Ws - W, x.T @ x) == pytest.approx(direct, rel=1e-9)


@pytest.mark.parametrize("n_tokens", [20, 400])  # 2 x 20 tokens < 64 inputs: direct; more: the Gram form
def test_linear_loss_scores_like_the_block_loss(n_tokens):
    """The grid score of a linear block from its weight error equals re-running the linear
    with the scaled, quantized weight (the reference loss) at every grid point."""
    torch.manual_seed(9)
    linear = torch.nn.Linear(64, 48, bias=True)
    xs = [correlated(n_tokens, 64, seed=10).reshape(2, -1, 64), correlated(n_tokens, 64, seed=11).reshape(2, -1, 64)]
    W = linear.weight.data.clone()
    reference = block_loss(lambda x, b: linear(x), {"o": linear}, {"o": W}, xs, SPEC)
    fast = linear_loss(W, xs, SPEC)
    w_mean = awq.weight_channel_mean([W], SPEC)
    x_mean = awq.activation_channel_mean(xs)
    with torch.no_grad():
        for ratio in (0.0, 0.25, 0.5, 0.95):
            s = awq.candidate_scales(x_mean, w_mean, ratio)
            assert fast(s) == pytest.approx(reference(s), rel=2e-3)


def clip_errors_direct(w: torch.Tensor, q: torch.Tensor, x: torch.Tensor, g: int) -> torch.Tensor:
    """The reference: mean over tokens of the (row, group) output difference squared."""
    xg, wg, qg = to_groups(x, g), to_groups(w, g), to_groups(q, g)
    return (torch.einsum("tgk,ogk->otg", xg, qg) - torch.einsum("tgk,ogk->otg", xg, wg)).pow(2).mean(dim=1)


def test_clip_errors_through_the_group_gram_equal_the_output_differences():
    x = correlated(300, 80, seed=13).double()  # 80 = 2 x 32 + 16: a narrower last group
    w = torch.randn(24, 80, dtype=torch.float64) * 0.05
    q = w + torch.randn_like(w) * 0.01
    xg = to_groups(x, 32)
    G = torch.einsum("tgk,tgl->gkl", xg, xg) / x.shape[0]
    fast = awq.clip_errors_gram(to_groups(q - w, 32), G)
    assert torch.allclose(fast, clip_errors_direct(w, q, x, 32), rtol=1e-10, atol=0)


def reference_search_clip(weight: torch.Tensor, x: torch.Tensor, spec: QuantSpec, n_grid: int = 20,
                          max_shrink: float = 0.5) -> torch.Tensor:
    """AWQ's clipping search as written before the Gram form: every grid point re-runs the groups."""
    from calibration.rtn import fake_quantize
    g = spec.group_width(weight.shape[1])
    w = to_groups(weight, g)
    org_max = w.abs().amax(dim=-1)
    best_err, best_max = torch.full_like(org_max, float("inf")), org_max.clone()
    for i in range(int(max_shrink * n_grid)):
        max_val = org_max * (1 - i / n_grid)
        clipped = torch.maximum(torch.minimum(w, max_val.unsqueeze(-1)), -max_val.unsqueeze(-1))
        q = fake_quantize(clipped.reshape(w.shape[0], -1), spec)
        err = clip_errors_direct(weight, q, x, g)
        better = err < best_err
        best_err, best_max = torch.where(better, err, best_err), torch.where(better, max_val, best_max)
    return best_max


@pytest.mark.parametrize("n_tokens", [16, 256])  # fewer tokens than a group's width: direct; more: Gram
def test_search_clip_picks_what_the_reference_picks(n_tokens):
    x = correlated(n_tokens, 80, seed=14).double()
    w = torch.randn(200, 80, dtype=torch.float64) * 0.05  # 200 rows: more than one row batch
    fast = awq.search_clip(w, x, SPEC, oc_batch=64)
    assert torch.equal(fast.double(), reference_search_clip(w.float(), x.float(), SPEC).double())


def test_spread_rows_picks_the_rows_of_the_concatenation():
    xs = [torch.randn(2, 7, 5), torch.randn(1, 3, 5), torch.randn(4, 9, 5)]
    flat = torch.cat([x.reshape(-1, 5) for x in xs])
    for n in (1, 2, 9, 53, 60):
        expected = flat[torch.linspace(0, len(flat) - 1, min(n, len(flat))).long()]
        assert torch.equal(spread_rows(xs, n), expected)


# --- the observation passes -------------------------------------------------------------------

class TinyLayer(torch.nn.Module):
    """attention-like and MLP-like linears in a decoder layer's order; counts its down calls."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.o = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        self.up, self.down = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)
        self.down_calls = 0
        self.down.register_forward_hook(lambda *_: setattr(self, "down_calls", self.down_calls + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.o(torch.tanh(self.q(x)))
        return h + self.down(torch.relu(self.up(h)))


def tiny_work() -> LayerWork:
    torch.manual_seed(12)
    layer = TinyLayer()
    linears = {"q": layer.q, "o": layer.o, "up": layer.up, "down": layer.down}
    return LayerWork(0, layer, [torch.randn(2, 5, 8), torch.randn(1, 5, 8)], [{}, {}], linears,
                     {r: r for r in linears})


def test_observation_stops_after_the_last_hooked_input():
    work = tiny_work()
    seen = observe_shared_inputs(work, lambda role: [], lambda acc, x: acc.append(x.clone()))
    assert work.layer.down_calls == 0  # the down projection's input was seen; it never ran
    expected: dict[str, list[torch.Tensor]] = {}  # each linear's input, computed by hand
    for x in work.inputs:
        h = x + work.layer.o(torch.tanh(work.layer.q(x)))
        expected.setdefault("q", []).append(x)
        expected.setdefault("o", []).append(torch.tanh(work.layer.q(x)))
        expected.setdefault("up", []).append(h)
        expected.setdefault("down", []).append(torch.relu(work.layer.up(h)))
    for role in ("q", "o", "up", "down"):
        assert len(seen[role]) == 2 and all(torch.equal(a, b) for a, b in zip(seen[role], expected[role]))
    captured = capture_calls(work, {"up": work.layer.up, "down": work.layer.down})
    assert [torch.equal(x, e) for (x, _), e in zip(captured["down"], expected["down"])] == [True, True]
    assert work.layer.down_calls == 0
    assert len(work.run()) == 2 and work.layer.down_calls == 2  # an ordinary run is whole


@pytest.mark.parametrize("n", [5, 256, 300, 1000])  # the solve alone; halves; odd halves; several levels
def test_lower_triangular_inverse(n):
    x = correlated(n + 50, n).double()
    L = torch.linalg.cholesky(x.T @ x / n + 0.01 * torch.eye(n, dtype=torch.float64))
    inv = lower_triangular_inverse(L)
    assert torch.equal(inv, inv.tril())
    assert torch.allclose(inv @ L, torch.eye(n, dtype=torch.float64), atol=1e-9)
