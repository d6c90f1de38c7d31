"""What every quantization algorithm's configuration has, and the calibration text settings
that the calibrated algorithms share."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from optimizer.core.errors import InputError
from optimizer.core.quant_defaults import CALIB_DEVICES, DEFAULTS

# what every configuration records in the manifest: the version of its settings, its method
# and the weight format (fields of the integer methods, constants of FP8's)
MANIFEST_HEAD = ("version", "method", "bits", "group_size", "symmetric", "lm_head_bits")
# settings that say where the work runs, not what it computes: left out of the settings the
# manifest records (the calibration record names the device used)
WHERE_IT_RUNS = frozenset({"calib_device"})


@dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """The configuration of one quantization algorithm: frozen, versioned, validating itself.

    A subclass names its `method` (as the command line and the manifest spell it), declares its
    settings as fields (defaults from optimizer.core.quant_defaults), and checks their values
    in validate(), each class checking its own fields and calling on (super). Every
    configuration has the attributes of MANIFEST_HEAD. calibration.config.quant_config builds
    one from a method name; calibration.ALGORITHMS maps each class to its algorithm."""

    method: ClassVar[str]
    version: ClassVar[int] = 1  # of the method's settings, recorded in the manifest
    # a setting the method fixes (a class constant) -> the error (message, hint) for another value
    fixed: ClassVar[dict[str, tuple[str, str]]] = {}

    keep: tuple[str, ...] = DEFAULTS["keep"]  # module-name patterns kept in float

    def validate(self) -> None:
        """Raise InputError for a value this method cannot take."""

    def describe(self) -> str:
        raise NotImplementedError

    def inactive(self) -> frozenset[str]:
        """Fields that take no effect with these values (the manifest leaves them out)."""
        return frozenset()

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's record of these settings: MANIFEST_HEAD and the fields in effect, in
        the order of DEFAULTS."""
        values = {name: getattr(self, name) for name in MANIFEST_HEAD}
        values.update({f.name: getattr(self, f.name) for f in fields(self)
                       if f.name not in self.inactive() and f.name not in WHERE_IT_RUNS})
        values["keep"] = list(self.keep)
        return {name: values[name] for name in ("version", *DEFAULTS) if name in values}


@dataclass(frozen=True, kw_only=True)
class Calibrated(QuantConfig):
    """The settings of an algorithm that runs calibration text through the model."""

    calib: str | None = DEFAULTS["calib"]  # calibration text, SOURCE:NxL (calibration/data.py)
    calib_seed: int | None = DEFAULTS["calib_seed"]  # draw the windows at random with this seed
    calib_allow_fewer: bool = DEFAULTS["calib_allow_fewer"]  # too little text: warn and use what there is
    batch_size: int = DEFAULTS["batch_size"]  # sequences per forward in the layer-by-layer driver
    calib_device: str = DEFAULTS["calib_device"]  # where the layers are calibrated (CALIB_DEVICES)

    def validate(self) -> None:
        super().validate()
        if not self.calib:
            raise InputError(f"--method {self.method} needs calibration data",
                             hint="pass --calib SOURCE:NxL, e.g. --calib c4:128x512")
        from calibration.data import check_source, parse_spec

        check_source(parse_spec(self.calib).source)
        if self.calib_device not in CALIB_DEVICES:
            raise InputError(f"unknown calibration device {self.calib_device!r}",
                             hint="choose " + ", ".join(CALIB_DEVICES))
        if self.calib_device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise InputError("--calib-device cuda: torch sees no CUDA device here",
                                 hint="use --calib-device auto (cpu here) or cpu")


# the calibration text settings: a run names its text once for all the methods it builds (a
# report's variants, a sweep), so a method that reads no text ignores them (quant_config)
CALIBRATION_SETTINGS = frozenset(f.name for f in fields(Calibrated)) - {f.name for f in fields(QuantConfig)}
