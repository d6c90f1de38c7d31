"""The ground floor: what every layer may import, importing nothing else of ours.

errors (the exception types and exit codes), progress (terminal and log progress), hashing,
architectures (architecture specs as data), assets (packaged models and text), artifact
(the engine directory: manifest, checksums, atomic write) and quant_defaults (the choices and
defaults of the quantization settings). runtime/, passes/ and calibration/
import from optimizer/ only this package; import-linter checks it (pyproject.toml).
"""
