"""The device sampler's graph interface, shared by the graphs' builder (runtime.sampler_graph)
and their runner (runtime.device_sampler): which graphs there are, their per-row inputs and
their outputs (runtime.device_sampler's docstring says what each computes)."""

from __future__ import annotations

import numpy as np

DEFAULT_CANDIDATES = 256  # top-k / top-p rows: the most likely tokens the device considers
KINDS = ("greedy", "full", "sample")  # the sampler graphs
# the sampled graphs' per-row inputs (RowParams' fields) and outputs; `greedy` has next_tokens only
PARAM_TYPES = {"temperature": np.float32, "top_k": np.int64, "top_p": np.float32, "uniform": np.float32}
OUTPUT_TYPES = {"next_tokens": np.int64, "logprobs": np.float32, "fallback": np.bool_}


def output_names(kind: str) -> tuple[str, ...]:
    """The output names of a sampler graph of this kind."""
    return ("next_tokens",) if kind == "greedy" else tuple(OUTPUT_TYPES)
