"""Calibration and weight quantization (RTN, AWQ, GPTQ, FP8) on the torch module, layer by layer.

Empty for now: the quantization issue lands here (data.py, sequential.py, rtn.py, awq.py,
gptq.py, mappings.py). Engines built today record `quantization: {"method": "none"}`.
"""
