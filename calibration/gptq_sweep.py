"""GPTQ's integer column sweep by whole sub-blocks, each sub-block's column-by-column work
captured once as a CUDA graph on the GPU.

Within a sub-block of b columns (calibration.gptq.SUB_BLOCK) each column is rounded, its
error scaled by Hinv and spread over the sub-block's later columns by a rank-1 update: about
nine small kernels a column, each launched from Python. On the GPU the launches, not the
arithmetic, bound the sweep (an H200 on 2026-12-02: GPTQ on the 8B shape took 6 s a layer, the
GPU 16-37% busy, slower than AWQ; benchmarks/results/gpu-calibration/). Here the sub-block's work is one pure function of fixed-shape
tensors (`round_sub_block`), captured once per shape over static buffers (`SubBlockGraph`), and
each sub-block then costs a few copies and one graph launch. The arithmetic is the same,
operation for operation, as calibration.gptq.sweep_columns with gptq_quantize's rounding, which
the CPU keeps (run eagerly, this path was 5-9% slower there: the gathers of each sub-block's
parameters); tests/test_calibration_fast.py holds the two to the same codes bit for bit.

`OPTIMIZER_GPTQ_CUDA_GRAPHS=0` runs the sub-blocks eagerly on CUDA (for comparison).
"""

from __future__ import annotations

import os
from typing import Callable

import torch


def round_sub_block(W: torch.Tensor, H: torch.Tensor, S: torch.Tensor, Z: torch.Tensor, Q: torch.Tensor,
                    E: torch.Tensor, qmax: int) -> None:
    """One sub-block of the sweep, in place: W (b, out) its columns as rows, H (b, b) their
    block of Hinv, S / Z (b, out) each column's scale and zero point; writes the codes Q and
    the scaled errors E (b, out), and spreads each column's error over the later rows of W."""
    for i in range(W.shape[0]):
        q = Q[i]
        torch.div(W[i], S[i], out=q).round_().add_(Z[i]).clamp_(0, qmax)
        torch.sub(W[i], (q - Z[i]) * S[i], out=E[i]).div_(H[i, i])
        W[i + 1:].addr_(H[i, i + 1:], E[i], alpha=-1)  # W[j] -= H[i, j] * E[i]


class SubBlockGraph:
    """round_sub_block over static (b, out) buffers, captured as one CUDA graph."""

    def __init__(self, b: int, out: int, qmax: int, device: torch.device) -> None:
        self.W, self.S, self.Z, self.Q, self.E = (torch.ones(b, out, device=device) for _ in range(5))
        self.H = torch.eye(b, device=device)  # the warm-up and capture runs compute on these

        def work() -> None:
            round_sub_block(self.W, self.H, self.S, self.Z, self.Q, self.E, qmax)

        side = torch.cuda.Stream(device)  # warm up off the capturing stream, as torch asks
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            work()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):  # other threads may use CUDA
            work()

    def run(self, W: torch.Tensor, H: torch.Tensor, S: torch.Tensor, Z: torch.Tensor, Q: torch.Tensor,
            E: torch.Tensor) -> None:
        self.W.copy_(W)
        self.H.copy_(H)
        self.S.copy_(S)
        self.Z.copy_(Z)
        self.graph.replay()
        Q.copy_(self.Q)
        E.copy_(self.E)


def graphs_wanted(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get("OPTIMIZER_GPTQ_CUDA_GRAPHS", "1") != "0"


class IntSubBlocks:
    """calibration.gptq.sweep_columns' `whole_sub_block` for gptq_quantize's integer rounding:
    QT (in, out) the codes written, scale / zero (groups, out) the parameters, group_of each
    column's group (sweep order). `group_start(col, i, W1)`, where given, sets a group's
    parameters when the sweep reaches its first column (dynamic groups; every group starts a
    sub-block). On CUDA each sub-block shape is captured once (SubBlockGraph)."""

    def __init__(self, QT: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_of: list[int], qmax: int,
                 group_start: Callable[[int, int, torch.Tensor], None] | None = None) -> None:
        self.QT, self.scale, self.zero, self.qmax, self.group_start = QT, scale, zero, qmax, group_start
        self.groups = torch.tensor(group_of, device=QT.device)
        self.use_graphs = graphs_wanted(QT.device)
        self.graphs: dict[int, SubBlockGraph] = {}

    def __call__(self, i1: int, j1: int, j2: int, W1: torch.Tensor, Hinv1: torch.Tensor, Err1: torch.Tensor) -> None:
        c1, c2 = i1 + j1, i1 + j2
        if self.group_start is not None:
            self.group_start(c1, j1, W1)
        idx = self.groups[c1:c2]
        S, Z = self.scale.index_select(0, idx), self.zero.index_select(0, idx)
        args = (W1[j1:j2], Hinv1[j1:j2, j1:j2], S, Z, self.QT[c1:c2], Err1[j1:j2])
        if not self.use_graphs:
            round_sub_block(*args, self.qmax)
            return
        b = j2 - j1
        if b not in self.graphs:
            self.graphs[b] = SubBlockGraph(b, W1.shape[1], self.qmax, W1.device)
        self.graphs[b].run(*args)
