"""One configuration per quantization algorithm, chosen by method name, dispatched by type.

    cfg = quant_config(method="gptq", bits=4, group_size=32, act_order=True)  # a GptqConfig
    cfg.validate()      # InputError for a value the method cannot take
    cfg.describe()      # "gptq int4 group 32 symmetric"
    cfg.to_manifest()   # its version, method, weight format and the settings in effect

The classes (frozen dataclasses): RtnConfig, AwqConfig, GptqConfig, AwqGptqConfig
(integer.py) and Fp8Config (fp8.py), on the QuantConfig base (base.py); calibration.ALGORITHMS
maps each class to the algorithm that runs it.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from calibration.config.base import CALIBRATION_SETTINGS, MANIFEST_HEAD, Calibrated, QuantConfig
from calibration.config.fp8 import Fp8Config
from calibration.config.integer import (AwqConfig, AwqGptqConfig, AwqScaling, GptqConfig, GptqRounding,
                                        IntWeightConfig, RtnConfig)
from optimizer.core.errors import InputError
from optimizer.core.quant_defaults import BITS, DEFAULT_KEEP, DEFAULTS, GROUP_SIZES

# method name -> its configuration class
CONFIGS: dict[str, type[QuantConfig]] = {
    cls.method: cls for cls in (RtnConfig, AwqConfig, GptqConfig, AwqGptqConfig, Fp8Config)
}
METHODS = tuple(CONFIGS)

__all__ = ["BITS", "CALIBRATION_SETTINGS", "CONFIGS", "DEFAULT_KEEP", "GROUP_SIZES", "MANIFEST_HEAD", "METHODS",
           "AwqConfig", "AwqGptqConfig", "AwqScaling", "Calibrated", "Fp8Config", "GptqConfig", "GptqRounding",
           "IntWeightConfig", "QuantConfig", "RtnConfig", "quant_config"]


def quant_config(method: str = DEFAULTS["method"], **settings: Any) -> QuantConfig:
    """The configuration of `method` with these settings, the others at their defaults.

    A setting that `method` does not have must be left at its default (InputError naming the
    methods it applies to), except the calibration text settings, which a method that reads no
    text ignores; a setting the method fixes (FP8's format) must have its fixed value. The
    values themselves are checked by the configuration's validate()."""
    cls = CONFIGS.get(method)
    if cls is None:
        raise InputError(f"unknown quantization method {method!r}", hint="methods: " + ", ".join(METHODS))
    own = {f.name for f in fields(cls)}
    chosen = {}
    for name, value in settings.items():
        if name not in DEFAULTS:
            raise TypeError(f"quant_config() got an unknown setting {name!r}")
        if name in own:
            chosen[name] = value
        elif name in cls.fixed:
            if value != getattr(cls, name):
                raise InputError(*cls.fixed[name])
        elif value != DEFAULTS[name] and name not in CALIBRATION_SETTINGS:
            raise _not_applicable(name)
    return cls(**chosen)


def _not_applicable(name: str) -> InputError:
    """`--act-order applies to --method gptq or awq-gptq only`: the methods having the setting."""
    owners = [cls for cls in CONFIGS.values() if name in {f.name for f in fields(cls)}]
    integer = [cls.method for cls in owners if issubclass(cls, IntWeightConfig)]
    other = [f"--quant {cls.method}" for cls in owners if not issubclass(cls, IntWeightConfig)]
    where = " or ".join((["--method " + " or ".join(integer)] if integer else []) + other)
    flag = "--" + name.replace("_", "-")
    return InputError(f"{flag} applies to {where} only", hint=f"drop {flag}, or use {where}")
