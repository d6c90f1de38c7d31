"""GPTQ: one-shot weight quantization with approximate second-order error correction.

Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers" (https://arxiv.org/abs/2210.17323). Names follow the paper and its reference
code: H the Hessian of the layer's squared error (2 X^T X / n), Hinv the upper Cholesky
factor of its inverse, W1 / Q1 / Err1 the block being quantized, its codes and scaled errors.

Columns are quantized left to right (or in decreasing diag(H) order with act_order); after
each column the remaining columns of its block absorb its error, and after each block the
rest of the matrix does (lazy batch updates).

Groups under act-order use *static* parameters: each group's scale and zero point are
computed from the original weights of its (contiguous) columns before any update, so the
groups stay contiguous in the original order and the engine needs no column index (g_idx).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from calibration.gptq_sweep import IntSubBlocks
from calibration.rtn import QuantizedLinear, QuantSpec, compute_qparams, to_groups


# columns whose errors reach each other by rank-1 updates in the sweep (sweep_columns)
SUB_BLOCK: int | None = 16


class HessianAccumulator:
    """Running H = 2/n * sum(x x^T) over the rows x of every batch seen, in float32."""

    def __init__(self, in_features: int) -> None:
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # (tokens, in)
        total = self.n + x.shape[0]
        self.H.mul_(self.n / total)
        add_gram_(self.H, x, 2.0 / total)
        self.n = total


def add_gram_(H: torch.Tensor, x: torch.Tensor, alpha: float, block: int = 512) -> None:
    """H += alpha * x^T x for x (tokens, in), H symmetric (in, in). x^T x is symmetric, so
    for wide inputs only the blocks on and above the diagonal are multiplied and the lower
    blocks copied from them: about half the multiply-adds of one addmm."""
    n = H.shape[0]
    if n <= 2 * block:
        H.addmm_(x.t(), x, alpha=alpha)
        return
    for i in range(0, n, block):
        j = min(i + block, n)
        H[i:j, i:].addmm_(x[:, i:j].t(), x[:, i:], alpha=alpha)  # (b, n - i): this block row's upper part
        H[j:, i:j] = H[i:j, j:].t()


class PairAccumulator(HessianAccumulator):
    """GPTAQ's statistics of one linear's input pairs: x from the float model and xq, what
    the quantized model feeds the same linear at the same token. H is xq's Hessian
    (2/n sum xq xq^T), C the cross term 2/n sum x xq^T, both over every token seen."""

    def __init__(self, in_features: int) -> None:
        super().__init__(in_features)
        self.C = torch.zeros(in_features, in_features, dtype=torch.float32)

    def add_pair(self, x: torch.Tensor, xq: torch.Tensor) -> None:
        x, xq = x.reshape(-1, x.shape[-1]).float(), xq.reshape(-1, xq.shape[-1]).float()
        if x.shape != xq.shape:
            raise ValueError(f"input pairs must match, got {tuple(x.shape)} and {tuple(xq.shape)}")
        total = self.n + x.shape[0]
        self.C.mul_(self.n / total)
        self.C.addmm_(x.t(), xq, alpha=2.0 / total)
        self.add(xq)  # H, and n


def asymmetric_target(W: torch.Tensor, H: torch.Tensor, C: torch.Tensor, damp: float) -> torch.Tensor:
    """The float weights W* that best map the quantized model's inputs Xq onto the float
    model's outputs W X: the minimizer of ||W X - W* Xq||^2 + lam ||W* - W||^2, which is
    W* = W (C + lam I)(H + lam I)^-1 with H = Xq Xq^T, C = X Xq^T and lam = damp * mean(diag H),
    the damping the GPTQ sweep adds to H. The ridge pulls towards W, not towards zero: a
    zero-centred ridge would shrink every channel whose diag(H) is small next to the mean,
    which massive-activation channels inflate. With Xq = X, W* = W exactly.

    This is the asymmetric calibration of Li et al., "GPTQv2 (GPTAQ): Efficient Finetuning-
    Free Quantization with Asymmetric Calibration" (ICML 2025), in closed form: since W* is
    the optimum, ||W X - Q Xq||^2 + lam ||W - Q||^2 = const + (W* - Q)(H + lam I)(W* - Q)^T
    summed over rows, so GPTQ of W* against the damped H minimizes the error against the
    float model's outputs, compensating the drift of earlier quantized layers and this
    input's own rounding. Pure function."""
    Hd, Cd = H.detach().float().clone(), C.detach().float().clone()
    lam = damp * torch.mean(torch.diag(Hd))
    dead = torch.diag(Hd) == 0
    Hd[dead, dead] = 1.0  # inputs never seen: W* keeps W's columns (GPTQ then zeroes them)
    Cd[dead, dead] = 1.0
    Hd.diagonal().add_(lam)
    Cd.diagonal().add_(lam)
    WC = W.detach().float() @ Cd
    return torch.linalg.solve(Hd, WC.t()).t()  # H symmetric: (H^-1 (W C)^T)^T = W C H^-1


def inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Hinv: the upper Cholesky factor of (H + damp * mean(diag H) * I)^-1 (H is modified).

    With J the reversal of rows and columns, J H J = L L^T gives H = R R^T with R = J L J upper
    triangular, so H^-1 = R^-T R^-1 and R^-1 = J L^-1 J is the upper factor asked for (the
    factor is unique: its diagonal is positive). One factorization and one triangular inverse,
    where the reference code factors H, inverts it and factors the inverse."""
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    return lower_triangular_inverse(torch.linalg.cholesky(H.flip(0, 1))).flip(0, 1)


def lower_triangular_inverse(L: torch.Tensor, base: int = 256) -> torch.Tensor:
    """L^-1 of a lower triangular L, by halves: [[A, 0], [B, C]]^-1 = [[A^-1, 0], [-C^-1 B A^-1,
    C^-1]]. About n^3 / 3 multiply-adds, nearly all in matrix products, where a triangular
    solve against the identity takes n^3 / 2 in a slower kernel."""
    n = L.shape[0]
    if n <= base:
        return torch.linalg.solve_triangular(L, torch.eye(n, dtype=L.dtype, device=L.device), upper=False)
    h = n // 2
    inv = torch.zeros_like(L)
    inv[:h, :h] = lower_triangular_inverse(L[:h, :h], base)
    inv[h:, h:] = lower_triangular_inverse(L[h:, h:], base)
    inv[h:, :h] = -(inv[h:, h:] @ (L[h:, :h] @ inv[:h, :h]))
    return inv


def sweep_columns(WT: torch.Tensor, Hinv: torch.Tensor, block_size: int,
                  rounded: Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor],
                  sub_block: int | None = None,
                  whole_sub_block: Callable[[int, int, int, torch.Tensor, torch.Tensor, torch.Tensor], None]
                  | None = None) -> None:
    """GPTQ's column sweep over W (out, in), given transposed: WT (in, out), so that a column
    of W is a contiguous row; modified in place. Column by column, left to right,
    `rounded(col, i, W1, WT)` gives the column's rounded value (i: its row in the block W1 =
    WT[i1:i2] being worked on); its error, scaled by Hinv, is spread over the block's later
    columns, and over the rest of the matrix after each block (lazy batch updates).

    With `sub_block` b, the block's later columns get a column's error in two steps: those of
    its sub-block of b columns at once (rank-1 updates of at most b - 1 rows), the others in one
    product after the sub-block (the same sums, in another order). Each rank-1 update then
    touches a few rows that stay in cache, where it would sweep the whole block. `rounded` sees
    every row from the start of the current sub-block on up to date, as without sub-blocks.
    `whole_sub_block(i1, j1, j2, W1, Hinv1, Err1)`, where given, does a sub-block's column loop
    in one go (rounding, errors into Err1[j1:j2], the updates inside the sub-block), in place of
    `rounded` (calibration.gptq_sweep: on the GPU, from a captured graph)."""
    n_in = WT.shape[0]
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        W1, Hinv1 = WT[i1:i2], Hinv[i1:i2, i1:i2]  # (B, out): a view, updated in place
        Err1 = torch.empty_like(W1)
        b = sub_block or (i2 - i1)
        for j1 in range(0, i2 - i1, b):
            j2 = min(j1 + b, i2 - i1)
            if whole_sub_block is not None:
                whole_sub_block(i1, j1, j2, W1, Hinv1, Err1)
            else:
                for i in range(j1, j2):
                    err = torch.sub(W1[i], rounded(i1 + i, i, W1, WT), out=Err1[i]).div_(Hinv1[i, i])
                    W1[i + 1:j2].addr_(Hinv1[i, i + 1:j2], err, alpha=-1)  # W1[j] -= Hinv1[i, j] * err
            if j2 < i2 - i1:
                W1[j2:].addmm_(Hinv1[j1:j2, j2:].t(), Err1[j1:j2], alpha=-1)
        WT[i2:].addmm_(Hinv[i1:i2, i2:].t(), Err1, alpha=-1)


def _prepared(W: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 copies, with inputs never seen (diag H == 0) zeroed and made harmless."""
    W = W.detach().float().clone()
    H = H.detach().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    return W, H


def gptq_fp8(W: torch.Tensor, H: torch.Tensor, *, damp: float = 0.01,
             block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ on the E4M3 grid: each row's scale is fixed from the original weights
    (max|w_row| / 448, as round-to-nearest FP8 uses), then columns are rounded to E4M3 left to
    right, each column's error spread over the columns not yet rounded. Returns (codes (out,
    in) float8_e4m3fn, scales (out,)). Pure function: neither argument is modified."""
    from calibration.fp8 import fake_quant_fp8, quantize_fp8, weight_scales

    W, H = _prepared(W, H)
    scales = weight_scales(W)
    QT = torch.empty(W.shape[1], W.shape[0], device=W.device)  # (in, out)

    def rounded(col: int, i: int, W1: torch.Tensor, _WT: torch.Tensor) -> torch.Tensor:
        QT[col] = fake_quant_fp8(W1[i], scales)
        return QT[col]

    sweep_columns(W.t().contiguous(), inverse_cholesky(H, damp), block_size, rounded, SUB_BLOCK)
    return quantize_fp8(QT.t(), scales.unsqueeze(1)), scales


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, spec: QuantSpec, *, act_order: bool = False,
                  damp: float = 0.01, block_size: int = 128) -> QuantizedLinear:
    """Quantize W (out, in) against Hessian H (in, in). Returns codes and parameters in the
    original column order. Pure function: neither argument is modified.

    Rows are rounded independently of each other (each row's errors stay in its row), so
    linears that read the same input can be quantized as one: gptq_quantize_shared."""
    out, n_in = W.shape
    g = spec.group_width(n_in)  # the last group may be narrower (calibration.rtn)
    if block_size % g != 0 and g % block_size != 0:
        block_size = g
    W, H = _prepared(W, H)
    n_groups = spec.groups(n_in)

    # (groups, out) scale and zero point of each group: static ones (from the original weights,
    # before any update) under act-order, else found when the sweep reaches the group
    if act_order:
        scale, zero = (p.t().contiguous() for p in compute_qparams(to_groups(W, g), spec))
    else:
        scale, zero = torch.zeros(n_groups, out, device=W.device), torch.zeros(n_groups, out, device=W.device)

    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(n_in)
    group_of = (perm // g).tolist()  # the group of each column, in sweep order
    WT = W.t()[perm].contiguous()  # (in, out): W's columns in sweep order, as rows
    H = H[perm][:, perm]
    QT = torch.empty_like(WT)  # codes, as rows in sweep order

    def group_start(col: int, i: int, W1: torch.Tensor) -> None:
        if col % g == 0:  # dynamic groups: parameters from the group's current (updated) weights
            width = min(g, W1.shape[0] - i) if g <= block_size else g
            cols = W1[i:i + width] if g <= block_size else WT[col:col + g]  # (width, out)
            scale[group_of[col]], zero[group_of[col]] = compute_qparams(cols.t(), spec)

    def rounded(col: int, i: int, W1: torch.Tensor, _WT: torch.Tensor) -> torch.Tensor:
        group = group_of[col]
        if not act_order:
            group_start(col, i, W1)
        q = QT[col]
        torch.div(W1[i], scale[group], out=q).round_().add_(zero[group]).clamp_(0, spec.qmax)
        return (q - zero[group]) * scale[group]

    # sub-blocks that a dynamic group never straddles: its parameters read current rows; on the
    # GPU each runs as a unit, captured as a CUDA graph (calibration.gptq_sweep: the same ops)
    sub = SUB_BLOCK if SUB_BLOCK and (act_order or (g % SUB_BLOCK == 0 and block_size % SUB_BLOCK == 0)) else None
    Hinv = inverse_cholesky(H, damp)
    whole = (IntSubBlocks(QT, scale, zero, group_of, spec.qmax, None if act_order else group_start)
             if sub and WT.is_cuda else None)
    sweep_columns(WT, Hinv, block_size, rounded, sub, whole)

    Q = QT[torch.argsort(perm)].t()  # (out, in), original column order
    return QuantizedLinear(Q.to(torch.uint8).contiguous(), scale.t().contiguous(),
                           zero.t().to(torch.uint8).contiguous(), spec)


def gptq_quantize_shared(weights: Sequence[torch.Tensor], H: torch.Tensor, spec: QuantSpec,
                         **options: Any) -> list[QuantizedLinear]:
    """gptq_quantize of several linears that read one input (one Hessian), as one matrix of
    their stacked rows: each gets the codes it would get alone (rows are independent), for
    one inverse and one sweep."""
    q = gptq_quantize(torch.cat([w.detach() for w in weights]), H, spec, **options)
    sizes = [w.shape[0] for w in weights]
    return [QuantizedLinear(c.clone(), s.clone(), z.clone(), spec) for c, s, z in
            zip(q.qweight.split(sizes), q.scales.split(sizes), q.zeros.split(sizes))]
