"""Which op feeds which linears, per architecture, as data (AWQ's smoothing pairs, GPTQ's
shared-input groups). Built from the architecture spec's norm placement, so a new family
only declares where its norms sit.
"""

from __future__ import annotations

from dataclasses import dataclass

from optimizer.core.architectures import ArchSpec

ROLES = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class Mapping:
    """`prev` (a norm name, or a linear role) feeds `linears`; `inspect` is the module whose
    output measures the error: "self_attn", "mlp", or a linear role."""

    prev_kind: str  # "norm" | "linear"
    prev: str
    linears: tuple[str, ...]
    inspect: str


def awq_mappings(arch: ArchSpec) -> tuple[Mapping, ...]:
    n = arch.norms
    return (
        Mapping("norm", n.attn_in, ("q", "k", "v"), "self_attn"),
        Mapping("linear", "v", ("o",), "o"),  # skipped when v's outputs are not o's inputs (GQA)
        Mapping("norm", n.mlp_in, ("gate", "up"), "mlp"),
        Mapping("linear", "up", ("down",), "down"),
    )


# Linears that see the same input share one Hessian (GPTQ): the first role of each group.
INPUT_GROUPS: tuple[tuple[str, ...], ...] = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))


def module_names(arch: ArchSpec, i: int) -> dict[str, str]:
    """role -> module name for layer i."""
    prefix = arch.layer_prefix.format(i=i)
    attn = dict(zip(("q", "k", "v", "o"), arch.attn_proj))
    mlp = dict(zip(("gate", "up", "down"), arch.mlp_proj))
    return {role: prefix + name for role, name in {**attn, **mlp}.items()}
