"""Quantization settings as one frozen, versioned, validated dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from calibration.rtn import QuantSpec
from optimizer.core.errors import InputError

# awq-gptq: AWQ's scaling search, then GPTQ rounding of the scaled weights (instead of AWQ's
# clipping search and round-to-nearest); fp8: W8A8 E4M3, per-channel weights, static activations
METHODS = ("rtn", "awq", "gptq", "awq-gptq", "fp8")
CALIBRATED = ("awq", "gptq", "awq-gptq", "fp8")  # methods that run calibration text through the model
GPTQ_ROUNDED = ("gptq", "awq-gptq")  # integer methods whose rounding is GPTQ's (act order applies)
BITS = (4, 8)
GROUP_SIZES = (32, 64, 128, 256)  # or None: per output channel
DEFAULT_KEEP = ("lm_head", "*embed_tokens*")
FP8_WEIGHT_ROUNDING = ("nearest", "gptq", "gptaq")
DISTILL_SETTINGS = ("distill_steps", "distill_lr", "distill_batch", "distill_data", "distill_device")


@dataclass(frozen=True)
class QuantConfig:
    version: int = 1
    method: str = "rtn"
    bits: int = 4
    group_size: int | None = 64
    symmetric: bool = True
    act_order: bool = False  # GPTQ: quantize columns in decreasing Hessian-diagonal order
    damp: float = 0.01  # GPTQ: dampening, as a fraction of mean(diag(H))
    awq_grid: int = 20  # AWQ: scale-search grid points in [0, 1)
    awq_loss_sequences: int = 16  # AWQ: calibration sequences used to score each grid point
    awq_clip: bool = True  # AWQ: search clipping ranges after scaling
    keep: tuple[str, ...] = field(default=DEFAULT_KEEP)  # module-name patterns kept in float
    calib: str | None = "c4:128x512"  # calibration text spec (RTN ignores it)
    calib_seed: int | None = None
    calib_allow_fewer: bool = False  # too little text: warn and use what there is, instead of failing
    batch_size: int = 8  # sequences per forward in the layer-by-layer driver
    lm_head_bits: int | None = None  # RTN-quantize the output projection too (untied from the
    #                                  embeddings, which stay float); None keeps it in float
    observer: str = "minmax"  # fp8: activation-scale observer (calibration.fp8.OBSERVERS)
    percentile: float = 99.99  # fp8, percentile observer: the |x| percentile mapped to 448
    smooth: float | None = None  # fp8: SmoothQuant migration strength alpha in [0, 1]; None: off
    fp8_weights: str = "nearest"  # fp8: weight rounding, "nearest", "gptq" (error-compensated) or
    #                               "gptaq" (GPTQ fitted to the float model's outputs)
    distill_steps: int = 0  # fp8: after calibration, fine-tune the weights against the float model
    #                         for this many steps (calibration/distill.py); 0: off
    distill_lr: float = 1e-4
    distill_batch: int = 8  # windows per step
    distill_data: str = "c4:512x512"  # text the distillation trains on
    distill_device: str = "cpu"  # cpu or cuda: where the distillation steps run

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown quantization method {self.method!r}",
                             hint="methods: " + ", ".join(METHODS))
        if self.bits not in BITS:
            raise InputError(f"unsupported bit width {self.bits}", hint="bit widths: " + ", ".join(map(str, BITS)))
        if self.group_size is not None and self.group_size not in GROUP_SIZES:
            raise InputError(f"unsupported group size {self.group_size}",
                             hint="group sizes: " + ", ".join(map(str, GROUP_SIZES)) + ", or 0 for per-channel")
        if self.method == "fp8":
            self._validate_fp8()
        if self.method in CALIBRATED and not self.calib:
            raise InputError(f"--method {self.method} needs calibration data",
                             hint="pass --calib SOURCE:NxL, e.g. --calib c4:128x512")
        if self.method in CALIBRATED:
            from calibration.data import check_source, parse_spec

            check_source(parse_spec(self.calib).source)
        if self.distill_steps and self.method != "fp8":
            raise InputError("--distill-steps applies to --quant fp8 only", hint="drop --distill-steps")
        if self.smooth is not None and self.method != "fp8":
            raise InputError("--smooth applies to --quant fp8 only", hint="drop --smooth, or use --quant fp8")
        if self.act_order and self.method not in GPTQ_ROUNDED:
            raise InputError("--act-order applies to --method gptq or awq-gptq only")
        if self.lm_head_bits is not None and self.lm_head_bits not in BITS:
            raise InputError(f"unsupported lm_head bit width {self.lm_head_bits}",
                             hint="lm_head bits: " + ", ".join(map(str, BITS)) + ", or none to keep it in float")
        if self.awq_grid < 2:
            raise InputError(f"AWQ grid must have at least 2 points, got {self.awq_grid}")

    def _validate_fp8(self) -> None:
        from calibration.fp8 import OBSERVERS

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
        if self.bits != 8 or self.group_size is not None or not self.symmetric:
            raise InputError("FP8 is 8-bit, per-channel and symmetric: bits, group size and --asym do not apply",
                             hint="drop --group-size / --asym with --quant fp8")
        if self.lm_head_bits is not None:
            raise InputError("--lm-head-bits applies to int4/int8; FP8 keeps the output projection in float",
                             hint="drop --lm-head-bits with --quant fp8")
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
        if self.distill_device not in ("cpu", "cuda"):
            raise InputError(f"unknown distillation device {self.distill_device!r}", hint="choose cpu or cuda")
        check_source(parse_spec(self.distill_data).source)

    def describe(self) -> str:
        if self.method == "fp8":
            smooth = "" if self.smooth is None else f", smoothed (alpha {self.smooth})"
            gptq = {"gptq": ", GPTQ-rounded weights", "gptaq": ", GPTAQ-fitted weights"}.get(self.fp8_weights, "")
            distill = f", distilled {self.distill_steps} steps" if self.distill_steps else ""
            return f"fp8 W8A8 (E4M3, per-channel weights{gptq}{distill}, {self.observer} activation scales{smooth})"
        return (f"{self.method} int{self.bits} {'per-channel' if self.group_size is None else f'group {self.group_size}'}"
                f" {'symmetric' if self.symmetric else 'asymmetric'}")

    @property
    def float_stream(self) -> bool:
        """Whether calibration carries the float model's hidden states (GPTAQ fits to them)."""
        return self.method == "fp8" and self.fp8_weights == "gptaq"

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(bits=self.bits, group_size=self.group_size, symmetric=self.symmetric)

    @property
    def lm_head_spec(self) -> QuantSpec:
        return QuantSpec(bits=self.lm_head_bits or self.bits, group_size=self.group_size, symmetric=self.symmetric)

    def applies(self, name: str) -> bool:
        """Whether the setting `name` means anything for this configuration's method (the
        manifest and `optimize inspect` show only those)."""
        fp8, gptq_rounded = self.method == "fp8", self.method in GPTQ_ROUNDED
        rules = {
            "act_order": gptq_rounded,
            "damp": gptq_rounded or (fp8 and self.fp8_weights != "nearest"),
            "awq_grid": self.method in ("awq", "awq-gptq"), "awq_loss_sequences": self.method in ("awq", "awq-gptq"),
            "awq_clip": self.method == "awq",
            "calib": self.method in CALIBRATED, "calib_seed": self.method in CALIBRATED,
            "calib_allow_fewer": self.method in CALIBRATED, "batch_size": self.method in CALIBRATED,
            "observer": fp8, "smooth": fp8, "fp8_weights": fp8,
            "percentile": fp8 and self.observer == "percentile",
            **{k: fp8 and bool(self.distill_steps) for k in DISTILL_SETTINGS},
        }
        return rules.get(name, True)

    def to_manifest(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if self.applies(k)}
        d["keep"] = list(self.keep)
        return d
