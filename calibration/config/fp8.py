"""FP8 W8A8 (E4M3): per-channel weights, per-tensor static activation scales observed on the
calibration text; optionally SmoothQuant first, GPTQ/GPTAQ rounding, or distillation after."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from calibration.config.base import Calibrated
from calibration.fp8 import OBSERVERS
from optimizer.core.errors import InputError
from optimizer.core.quant_defaults import DEFAULTS, DISTILL_DEVICES, FP8_WEIGHT_ROUNDING

_FORMAT = ("FP8 is 8-bit, per-channel and symmetric: bits, group size and --asym do not apply",
           "drop --group-size / --asym with --quant fp8")


@dataclass(frozen=True, kw_only=True)
class Fp8Config(Calibrated):
    """FP8 W8A8: weights rounded per output channel to E4M3, activations quantized with scales
    observed on the calibration text."""

    method: ClassVar[str] = "fp8"
    # the format, fixed: 8-bit E4M3 codes, one scale per output channel, no zero points; the
    # output projection stays in float
    bits: ClassVar[int] = 8
    group_size: ClassVar[int | None] = None
    symmetric: ClassVar[bool] = True
    lm_head_bits: ClassVar[int | None] = None
    fixed: ClassVar[dict[str, tuple[str, str]]] = {
        "bits": _FORMAT, "group_size": _FORMAT, "symmetric": _FORMAT,
        "lm_head_bits": ("--lm-head-bits applies to int4/int8; FP8 keeps the output projection in float",
                         "drop --lm-head-bits with --quant fp8")}

    observer: str = DEFAULTS["observer"]  # activation-scale observer (calibration.fp8.OBSERVERS)
    percentile: float = DEFAULTS["percentile"]  # percentile observer: the |x| percentile mapped to 448
    smooth: float | None = DEFAULTS["smooth"]  # SmoothQuant migration strength alpha in [0, 1]; None: off
    fp8_weights: str = DEFAULTS["fp8_weights"]  # weight rounding: "nearest", "gptq" (error-compensated)
    #                                             or "gptaq" (GPTQ fitted to the float model's outputs)
    damp: float = DEFAULTS["damp"]  # gptq/gptaq rounding: dampening, as a fraction of mean(diag(H))
    distill_steps: int = DEFAULTS["distill_steps"]  # after calibration, fine-tune the weights against
    #                                                 the float model for this many steps (distill.py); 0: off
    distill_lr: float = DEFAULTS["distill_lr"]
    distill_batch: int = DEFAULTS["distill_batch"]  # windows per step
    distill_data: str = DEFAULTS["distill_data"]  # text the distillation trains on
    distill_device: str = DEFAULTS["distill_device"]  # where the distillation steps run

    def validate(self) -> None:
        super().validate()
        if self.observer not in OBSERVERS:
            raise InputError(f"unknown FP8 observer {self.observer!r}", hint="observers: " + ", ".join(OBSERVERS))
        if not 50.0 < self.percentile <= 100.0:
            raise InputError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.fp8_weights not in FP8_WEIGHT_ROUNDING:
            raise InputError(f"unknown FP8 weight rounding {self.fp8_weights!r}",
                             hint="choose one of: " + ", ".join(FP8_WEIGHT_ROUNDING))
        if self.smooth is not None and not 0.0 <= self.smooth <= 1.0:
            raise InputError(f"smoothing strength must be in [0, 1], got {self.smooth}",
                             hint="e.g. --smooth 0.5 (SmoothQuant's default)")
        if self.distill_steps:
            self._validate_distillation()

    def _validate_distillation(self) -> None:
        from calibration.data import check_source, parse_spec

        if self.distill_steps < 0:
            raise InputError(f"distillation steps must be >= 0, got {self.distill_steps}")
        if not self.distill_lr > 0 or self.distill_batch < 1:
            raise InputError(f"distillation needs a positive learning rate and batch, got lr {self.distill_lr}, "
                             f"batch {self.distill_batch}")
        if self.fp8_weights != "nearest" or self.smooth is not None:
            raise InputError("--distill-steps trains from the float weights and rounds them to nearest at the "
                             "end, so --method gptq/gptaq and --smooth do not apply",
                             hint="drop --method / --smooth, or drop --distill-steps")
        if self.distill_device not in DISTILL_DEVICES:
            raise InputError(f"unknown distillation device {self.distill_device!r}", hint="choose cpu or cuda")
        check_source(parse_spec(self.distill_data).source)

    def describe(self) -> str:
        smooth = "" if self.smooth is None else f", smoothed (alpha {self.smooth})"
        gptq = {"gptq": ", GPTQ-rounded weights", "gptaq": ", GPTAQ-fitted weights"}.get(self.fp8_weights, "")
        distill = f", distilled {self.distill_steps} steps" if self.distill_steps else ""
        return f"fp8 W8A8 (E4M3, per-channel weights{gptq}{distill}, {self.observer} activation scales{smooth})"

    def inactive(self) -> frozenset[str]:
        off = set()
        if self.fp8_weights == "nearest":
            off.add("damp")
        if self.observer != "percentile":
            off.add("percentile")
        if not self.distill_steps:
            off.update(f.name for f in fields(self) if f.name.startswith("distill_"))
        return frozenset(off)

    @property
    def float_stream(self) -> bool:
        """Whether calibration carries the float model's hidden states (GPTAQ fits to them)."""
        return self.fp8_weights == "gptaq"
