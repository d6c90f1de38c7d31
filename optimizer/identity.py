"""An engine's identity: everything its bytes depend on, hashed into a cache key.

The key covers the source (its kind, file sha256s, or preset config and seed), every build
option that changes the engine (dtype, quantization settings with the calibration spec,
passes, target, cache layout and sizes, accuracy gate), the optimizer's version and the
engine format version. The same key means the same engine, so `optimize report` reuses an
engine whose manifest carries the key it would build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

# BuildOptions fields that do not change the engine's contents
_NOT_IDENTITY = {"out", "source", "overwrite", "quiet", "dump_ir_after", "recipe", "tokenizer"}


def build_identity(opts: Any, source: dict[str, Any]) -> dict[str, Any]:
    from optimizer import __version__
    from optimizer.core.engine_format import FORMAT_VERSION

    build = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name not in _NOT_IDENTITY}
    build["quant"] = None if opts.quant is None else opts.quant.to_manifest()
    build["passes"] = list(opts.pass_names)
    inputs = {"source": {k: v for k, v in source.items() if k != "path"},  # content, not location
              "build": build, "optimizer": __version__, "format_version": FORMAT_VERSION}
    canonical = json.dumps(inputs, sort_keys=True, default=str)
    return {"key": hashlib.sha256(canonical.encode()).hexdigest(), "inputs": json.loads(canonical)}
