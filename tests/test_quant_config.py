"""One configuration class per quantization algorithm: built from a method name by
quant_config, dispatched by type, each validating itself; the manifest records what the one
flat configuration of earlier versions recorded, key for key."""

from __future__ import annotations

import dataclasses

import pytest

from calibration import ALGORITHMS
from calibration.config import (CONFIGS, AwqConfig, AwqGptqConfig, Fp8Config, GptqConfig, RtnConfig,
                                quant_config)
from optimizer.core.errors import InputError
from optimizer.core.quant_defaults import DEFAULT_KEEP, DEFAULTS, OBSERVERS
from optimizer.options import QuantSection, option_fields
from optimizer.recipes import quant_config_from

KEEP = list(DEFAULT_KEEP)
CALIB = dict(calib="c4:128x512", calib_seed=None, calib_allow_fewer=False, batch_size=8)
HEAD = dict(version=1, method="fp8", bits=8, group_size=None, symmetric=True)


# what engines built before the split recorded for each method (its settings, and no others), in
# the same order
@pytest.mark.parametrize("settings,expected", [
    (dict(method="rtn"),
     dict(version=1, method="rtn", bits=4, group_size=64, symmetric=True, keep=KEEP, lm_head_bits=None)),
    (dict(method="rtn", bits=8, group_size=None, symmetric=False, lm_head_bits=8),
     dict(version=1, method="rtn", bits=8, group_size=None, symmetric=False, keep=KEEP, lm_head_bits=8)),
    (dict(method="awq", awq_grid=4),
     dict(version=1, method="awq", bits=4, group_size=64, symmetric=True, awq_grid=4, awq_loss_sequences=16,
          awq_clip=True, keep=KEEP, **CALIB, lm_head_bits=None)),
    (dict(method="gptq", act_order=True, damp=0.05),
     dict(version=1, method="gptq", bits=4, group_size=64, symmetric=True, act_order=True, damp=0.05, keep=KEEP,
          **CALIB, lm_head_bits=None)),
    (dict(method="awq-gptq", group_size=32, lm_head_bits=4),
     dict(version=1, method="awq-gptq", bits=4, group_size=32, symmetric=True, act_order=False, damp=0.01,
          awq_grid=20, awq_loss_sequences=16, keep=KEEP, **CALIB, lm_head_bits=4)),
    (dict(method="fp8", bits=8, group_size=None),
     dict(HEAD, keep=KEEP, **CALIB, lm_head_bits=None, observer="minmax", smooth=None, fp8_weights="nearest")),
    (dict(method="fp8", observer="percentile", fp8_weights="gptq", smooth=0.5),
     dict(HEAD, damp=0.01, keep=KEEP, **CALIB, lm_head_bits=None, observer="percentile", percentile=99.99,
          smooth=0.5, fp8_weights="gptq")),
    (dict(method="fp8", distill_steps=3),
     dict(HEAD, keep=KEEP, **CALIB, lm_head_bits=None, observer="minmax", smooth=None, fp8_weights="nearest",
          distill_steps=3, distill_lr=1e-4, distill_batch=8, distill_data="c4:512x512", distill_device="cpu")),
])
def test_manifest_records_the_same_settings_as_before(settings, expected):
    assert list(quant_config(**settings).to_manifest().items()) == list(expected.items())


def test_each_method_has_its_class_and_its_algorithm():
    assert {m: type(quant_config(m)) for m in CONFIGS} == {
        "rtn": RtnConfig, "awq": AwqConfig, "gptq": GptqConfig, "awq-gptq": AwqGptqConfig, "fp8": Fp8Config}
    assert set(ALGORITHMS) == set(CONFIGS.values())
    for cls in CONFIGS.values():
        assert cls.version == 1 and dataclasses.is_dataclass(cls)
        cls().validate()  # the defaults are valid
        with pytest.raises(dataclasses.FrozenInstanceError):
            cls().keep = ()


@pytest.mark.parametrize("settings,message", [
    (dict(method="rtn", smooth=0.5), "--smooth applies to --quant fp8 only"),
    (dict(method="gptq", distill_lr=1e-3), "--distill-lr applies to --quant fp8 only"),
    (dict(method="awq-gptq", awq_clip=False), "--awq-clip applies to --method awq only"),
    (dict(method="rtn", damp=0.1), "--damp applies to --method gptq or awq-gptq or --quant fp8 only"),
    (dict(method="fp8", observer="mse", act_order=True), "--act-order applies to --method gptq or awq-gptq only"),
    (dict(method="fp8", bits=4), "FP8 is 8-bit, per-channel and symmetric"),
    (dict(method="fp8", group_size=64), "FP8 is 8-bit, per-channel and symmetric"),
    (dict(method="fp8", lm_head_bits=8), "--lm-head-bits applies to int4/int8"),
])
def test_settings_of_other_methods_are_refused_when_made(settings, message):
    with pytest.raises(InputError, match=message):
        quant_config(**settings)


def test_settings_left_at_their_defaults_and_the_calibration_text_are_ignored():
    cfg = quant_config("rtn", act_order=False, observer="minmax", distill_steps=0, calib="wiki:4x64", batch_size=2)
    assert cfg == RtnConfig() and "calib" not in cfg.to_manifest()
    assert quant_config("fp8", bits=8, group_size=None, symmetric=True, lm_head_bits=None) == Fp8Config()
    with pytest.raises(TypeError, match="unknown setting 'colour'"):
        quant_config("rtn", colour="blue")


def test_the_options_and_the_configurations_share_their_defaults():
    for f in option_fields(QuantSection):
        if f.name in DEFAULTS and f.name not in ("keep", "group_size"):  # the section spells these its own way
            assert f.default == DEFAULTS[f.name], f.name
    for cls in CONFIGS.values():
        for f in dataclasses.fields(cls):
            assert f.default == DEFAULTS[f.name], (cls.__name__, f.name)
    assert quant_config_from(QuantSection(quant="int4")) == RtnConfig()
    assert quant_config_from(QuantSection(quant="fp8")) == Fp8Config()
    assert quant_config_from(QuantSection(quant="int8", method="gptq", group_size=0, keep=["*.down_proj"])) == \
        GptqConfig(bits=8, group_size=None, keep=(*DEFAULT_KEEP, "*.down_proj"))
    with pytest.raises(InputError, match="--smooth applies to --quant fp8 only"):
        quant_config_from(QuantSection(quant="int4", smooth=0.5))


def test_observer_choices_are_the_implemented_observers():
    from calibration.fp8 import OBSERVERS as IMPLEMENTED

    assert tuple(IMPLEMENTED) == OBSERVERS
