"""The ground floor: what every layer may import, importing nothing else of ours.

errors (the exception types and exit codes), progress (terminal and log progress), hashing,
architectures (architecture specs as data), assets (packaged models and text) and artifact
(the engine directory: manifest, checksums, atomic write). runtime/, passes/ and calibration/
import from optimizer/ only this package; import-linter checks it (pyproject.toml).
"""
