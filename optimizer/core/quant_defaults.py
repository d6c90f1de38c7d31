"""The quantization settings' choices and defaults, written once.

Two declarations read them: the options a user gives (optimizer.options.QuantSection: the
flags, recipe keys and schema) and the configuration of each quantization algorithm
(calibration.config). Plain values, importing nothing.
"""

from __future__ import annotations

from typing import Any

BITS = (4, 8)  # integer weight widths
GROUP_SIZES = (32, 64, 128, 256)  # or None: per output channel
DEFAULT_KEEP = ("lm_head", "*embed_tokens*")  # module-name patterns always kept in float
OBSERVERS = ("minmax", "percentile", "mse")  # FP8 activation-scale observers (calibration/fp8.py)
FP8_WEIGHT_ROUNDING = ("nearest", "gptq", "gptaq")
DISTILL_DEVICES = ("cpu", "cuda")
CALIB_DEVICES = ("auto", "cpu", "cuda")  # auto: cuda where torch sees a GPU, else cpu

# setting -> default (calibration.config's fields say what each means), in the order manifests
# list the settings (the order engines have always had)
DEFAULTS: dict[str, Any] = {
    "method": "rtn",
    "bits": 4,
    "group_size": 64,
    "symmetric": True,
    "act_order": False,
    "damp": 0.01,
    "awq_grid": 20,
    "awq_loss_sequences": 16,
    "awq_clip": True,
    "keep": DEFAULT_KEEP,
    "calib": "c4:128x512",
    "calib_seed": None,
    "calib_allow_fewer": False,
    "batch_size": 8,
    "calib_device": "auto",
    "lm_head_bits": None,
    "observer": "minmax",
    "percentile": 99.99,
    "smooth": None,
    "fp8_weights": "nearest",
    "distill_steps": 0,
    "distill_lr": 1e-4,
    "distill_batch": 8,
    "distill_data": "c4:512x512",
    "distill_device": "cpu",
}
