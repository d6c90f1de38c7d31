"""Per-layer steps of each calibrated method, run by the sequential driver: one module per
algorithm (gptq, awq with awq-gptq, fp8), sharing the hook plumbing of hooks.py.

Each step quantizes the layer's linears in place (their weights become the dequantized,
"fake-quant" values, so the torch model computes what the engine will) and records the
codes in `codes[module_name]` for lowering to MatMulNBits (or FP8 Q/DQ).
"""

from calibration.methods.awq import awq_gptq_layer, awq_layer
from calibration.methods.fp8 import fp8_layer, smooth_layer
from calibration.methods.gptq import gptq_layer
from calibration.methods.hooks import store_quantized

__all__ = ["awq_gptq_layer", "awq_layer", "fp8_layer", "gptq_layer", "smooth_layer", "store_quantized"]
