"""The integer weight methods (MatMulNBits): rtn, awq, gptq and awq-gptq.

Each is the integer weight format (IntWeightConfig) plus the settings of the steps it runs:
AWQ's scale search (AwqScaling), GPTQ's rounding (GptqRounding), calibration text (Calibrated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from calibration.config.base import Calibrated, QuantConfig
from calibration.rtn import QuantSpec
from optimizer.core.errors import InputError
from optimizer.core.quant_defaults import BITS, DEFAULTS, GROUP_SIZES


@dataclass(frozen=True, kw_only=True)
class IntWeightConfig(QuantConfig):
    """Integer weights: `bits`-wide codes with a scale (and a zero point, when asymmetric) per
    group of `group_size` input columns."""

    bits: int = DEFAULTS["bits"]
    group_size: int | None = DEFAULTS["group_size"]  # None: per output channel
    symmetric: bool = DEFAULTS["symmetric"]
    lm_head_bits: int | None = DEFAULTS["lm_head_bits"]  # quantize the output projection too (a tied
    #                                                      embedding shares its codes); None: float

    def validate(self) -> None:
        super().validate()
        if self.bits not in BITS:
            raise InputError(f"unsupported bit width {self.bits}", hint="bit widths: " + ", ".join(map(str, BITS)))
        if self.group_size is not None and self.group_size not in GROUP_SIZES:
            raise InputError(f"unsupported group size {self.group_size}",
                             hint="group sizes: " + ", ".join(map(str, GROUP_SIZES)) + ", or 0 for per-channel")
        if self.lm_head_bits is not None and self.lm_head_bits not in BITS:
            raise InputError(f"unsupported lm_head bit width {self.lm_head_bits}",
                             hint="lm_head bits: " + ", ".join(map(str, BITS)) + ", or none to keep it in float")

    def describe(self) -> str:
        groups = "per-channel" if self.group_size is None else f"group {self.group_size}"
        return f"{self.method} int{self.bits} {groups} {'symmetric' if self.symmetric else 'asymmetric'}"

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(bits=self.bits, group_size=self.group_size, symmetric=self.symmetric)

    @property
    def lm_head_spec(self) -> QuantSpec:
        return QuantSpec(bits=self.lm_head_bits or self.bits, group_size=self.group_size, symmetric=self.symmetric)


@dataclass(frozen=True, kw_only=True)
class AwqScaling(QuantConfig):
    """AWQ's search for per-input-channel scales that protect the salient weights."""

    awq_grid: int = DEFAULTS["awq_grid"]  # scale-search grid points in [0, 1)
    awq_loss_sequences: int = DEFAULTS["awq_loss_sequences"]  # calibration sequences scoring each point

    def validate(self) -> None:
        super().validate()
        if self.awq_grid < 2:
            raise InputError(f"AWQ grid must have at least 2 points, got {self.awq_grid}")


@dataclass(frozen=True, kw_only=True)
class GptqRounding(QuantConfig):
    """GPTQ's rounding: column by column, each rounding error fed back into the columns left,
    weighted by the inverse Hessian of the calibration inputs."""

    act_order: bool = DEFAULTS["act_order"]  # columns in decreasing Hessian-diagonal order
    damp: float = DEFAULTS["damp"]  # dampening, as a fraction of mean(diag(H))


@dataclass(frozen=True, kw_only=True)
class RtnConfig(IntWeightConfig):
    """Round to nearest: no calibration."""

    method: ClassVar[str] = "rtn"


@dataclass(frozen=True, kw_only=True)
class AwqConfig(Calibrated, AwqScaling, IntWeightConfig):
    """AWQ: activation-aware scaling, a clipping-range search, then round to nearest."""

    method: ClassVar[str] = "awq"
    awq_clip: bool = DEFAULTS["awq_clip"]  # search clipping ranges after scaling


@dataclass(frozen=True, kw_only=True)
class GptqConfig(Calibrated, GptqRounding, IntWeightConfig):
    """GPTQ: error-compensated rounding against each layer's calibration Hessians."""

    method: ClassVar[str] = "gptq"


@dataclass(frozen=True, kw_only=True)
class AwqGptqConfig(Calibrated, GptqRounding, AwqScaling, IntWeightConfig):
    """AWQ's scaling, then GPTQ rounding of the scaled weights (instead of AWQ's clipping
    search and round to nearest)."""

    method: ClassVar[str] = "awq-gptq"
