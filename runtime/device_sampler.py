"""Next-token selection on the device: a small ONNX graph that reads the engine's logits
buffer where the engine wrote it and returns token ids, so only ids cross to the host.

Three graphs, built from code by `runtime.sampler_graph` (no file in the engine):

    greedy   logits (B, 1, V) -> next_tokens (B,) int64 = argmax
    sample   logits, temperature (B,), top_k (B,) int64, top_p (B,), uniform (B,)
             -> next_tokens, logprobs (B,) float32, fallback (B,) bool
    full     the same inputs and outputs, for steps whose sampled rows all use the whole
             vocabulary (no top-k, top-p 1): `sample` without its candidates (two TopK over
             the vocabulary and the cut), which every row of such a step skips anyway; a row
             that would need the cut is flagged in `fallback` instead.

`sample` computes, for every row, what `runtime.sampling.sample_next` computes on the host
with the same uniform number u (the host draws u from the request's seeded generator, so a
seed gives the same tokens on either path, up to float32 rounding at CDF boundaries):

- temperature 0: argmax of the raw logits;
- temperature only (top_k 0, top_p 1): softmax(logits / T) over the whole vocabulary, and the
  first token, in vocabulary order, whose cumulative mass exceeds u times the total;
- top-k and/or top-p: the `candidates` most likely tokens (TopK), the top-k cut (every token
  as likely as the k-th, ties kept, renormalized as the host does), the nucleus (a token stays
  while the mass strictly before it, in probability order, is below top_p), then the same
  inverse-CDF lookup with the kept tokens put back in vocabulary order. Where the cut would
  need more than `candidates` tokens (top_k above it, the k-th's ties reaching the last
  candidate, or a nucleus wider than it), the row's `fallback` is set and the runtime
  samples that row on the host from the logits instead; nothing is silently truncated.

`logprobs` is log_softmax of the raw logits at the chosen token (the model's distribution, as
OpenAI's `logprobs` reports it); a greedy step that wants them runs `sample` (whose
temperature-0 rows are argmax too). The graphs avoid ReduceMax and ReduceLogSumExp over the
vocabulary, which onnxruntime 1.31's CUDA provider runs in 7-20 ms at 16-64 rows (Softmax,
ArgMax and ReduceSum take 0.02-0.1 ms).

`DeviceSampler` runs them on an onnxruntime session of their own, per batch bucket with
fixed device buffers, captured in CUDA graphs where the provider is CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from runtime.sampler_spec import DEFAULT_CANDIDATES, KINDS, OUTPUT_TYPES, PARAM_TYPES, output_names
from runtime.sampling import SamplingParams, U_MAX
@dataclass
class RowParams:
    """The sampler's per-row inputs for one step (host arrays of the bucket's size)."""

    temperature: np.ndarray  # (B,) float32, 0 = greedy
    top_k: np.ndarray  # (B,) int64, 0 = off
    top_p: np.ndarray  # (B,) float32, 1 = off
    uniform: np.ndarray  # (B,) float32 in [0, U_MAX]

    @classmethod
    def empty(cls, rows: int) -> "RowParams":
        return cls(np.zeros(rows, np.float32), np.zeros(rows, np.int64), np.ones(rows, np.float32),
                   np.zeros(rows, np.float32))

    def set(self, row: int, params: SamplingParams, u: float) -> None:
        self.temperature[row] = params.temperature
        self.top_k[row] = params.top_k
        self.top_p[row] = params.top_p
        self.uniform[row] = min(u, U_MAX)

    def clear(self) -> None:
        self.temperature[:] = 0.0
        self.top_k[:] = 0
        self.top_p[:] = 1.0
        self.uniform[:] = 0.0

    def greedy(self, rows: int) -> bool:
        return not self.temperature[:rows].any()

    def whole_vocabulary(self, rows: int) -> bool:
        """Whether no row cuts the vocabulary (no top-k, top-p 1): the `full` graph serves them."""
        return not self.top_k[:rows].any() and bool((self.top_p[:rows] >= 1.0).all())

    def kind(self, rows: int, logprobs: bool = False) -> str:
        """The sampler graph for the first `rows` rows (one of KINDS)."""
        if self.greedy(rows) and not logprobs:
            return "greedy"
        return "full" if self.whole_vocabulary(rows) else "sample"


class DeviceSampler:
    """The sampler graphs on an onnxruntime session each, fed by the engine's logits buffers.

    `bind(bucket, logits)` prepares the bucket's fixed buffers once (the logits OrtValue is the
    engine's output buffer of that bucket: its device memory is read in place); `run(bucket,
    rows)` writes the per-row parameters into the device buffers, replays the bucket's graph and
    returns (tokens, logprobs, fallback) for its first `rows` rows as host arrays: B int64,
    B float32 and B bools are all that cross to the host."""

    def __init__(self, vocab: int, logits_dtype, device: str, provider_options: dict | None = None,
                 candidates: int = DEFAULT_CANDIDATES) -> None:
        self.device = device
        self.vocab, self.logits_dtype = vocab, np.dtype(logits_dtype)
        self.graphs = bool(provider_options and provider_options.get("enable_cuda_graph") == "1")
        provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        from runtime.sampler_graph import sampler_model  # onnx is imported only where graphs are made

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.sessions = {kind: ort.InferenceSession(
            sampler_model(vocab, kind, logits_dtype, candidates).SerializeToString(), opts,
            providers=[(provider, provider_options or {})]) for kind in KINDS}
        self._buckets: dict[int, dict] = {}
        self._next_graph = 1  # graph ids of this sampler's sessions (0 is never used)
        self._eager = ort.RunOptions()  # run_on: never captured
        self._eager.add_run_config_entry("gpu_graph_id", "-1")

    def bind(self, bucket: int, logits: ort.OrtValue) -> None:
        """Bind the bucket's buffers. `logits` holds the bucket's rows: (bucket, 1, V) from a
        static step, (1, bucket, V) from a paged one; read in place as (bucket, 1, V) either way
        (the caller keeps it alive)."""
        if logits.shape()[-1] != self.vocab or int(np.prod(logits.shape())) != bucket * self.vocab:
            raise ValueError(f"logits {logits.shape()} do not hold {bucket} rows of {self.vocab}")
        b = {"outputs": {}, "params": {}, "bindings": {}, "run": {}}
        for name, dtype in PARAM_TYPES.items():
            b["params"][name] = ort.OrtValue.ortvalue_from_shape_and_type((bucket,), dtype, self.device, 0)
        for kind, session in self.sessions.items():
            binding = session.io_binding()
            binding.bind_input("logits", self.device, 0, self.logits_dtype, (bucket, 1, self.vocab),
                               logits.data_ptr())
            if kind != "greedy":
                for name, value in b["params"].items():
                    binding.bind_ortvalue_input(name, value)
            values = {n: ort.OrtValue.ortvalue_from_shape_and_type((bucket,), OUTPUT_TYPES[n], self.device, 0)
                      for n in output_names(kind)}
            for name, value in values.items():
                binding.bind_ortvalue_output(name, value)
            run = ort.RunOptions()
            run.add_run_config_entry("gpu_graph_id", str(self._next_graph if self.graphs else -1))
            self._next_graph += self.graphs
            b["bindings"][kind], b["outputs"][kind], b["run"][kind] = binding, values, run
        self._buckets[bucket] = b

    def run_on(self, logits: ort.OrtValue, rows: int, params: RowParams, logprobs: bool = False
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """One uncaptured run on any buffer of `rows` logits rows ((rows, 1, V) or (1, rows, V),
        read in place: an eager step's output), with the first `rows` of `params`; returns what
        `run` returns. The parameters go in and the results come back through host memory."""
        if int(np.prod(logits.shape())) != rows * self.vocab:
            raise ValueError(f"logits {logits.shape()} do not hold {rows} rows of {self.vocab}")
        kind = params.kind(rows, logprobs)
        session = self.sessions[kind]
        binding = session.io_binding()
        binding.bind_input("logits", self.device, 0, self.logits_dtype, (rows, 1, self.vocab), logits.data_ptr())
        if kind != "greedy":
            for name in PARAM_TYPES:
                binding.bind_cpu_input(name, np.ascontiguousarray(getattr(params, name)[:rows]))
        names = output_names(kind)
        for name in names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding, self._eager)
        outs = dict(zip(names, binding.copy_outputs_to_cpu()))
        return (outs["next_tokens"], outs["logprobs"] if logprobs else None,
                outs["fallback"] if kind != "greedy" else None)

    def run(self, bucket: int, rows: int, params: RowParams, logprobs: bool = False
            ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        b = self._buckets[bucket]
        kind = params.kind(bucket, logprobs)
        if kind != "greedy":
            for name, value in b["params"].items():
                value.update_inplace(getattr(params, name)[:bucket])
        self.sessions[kind].run_with_iobinding(b["bindings"][kind], b["run"][kind])
        outs = b["outputs"][kind]
        tokens = outs["next_tokens"].numpy()[:rows]
        lp = outs["logprobs"].numpy()[:rows] if logprobs else None
        fallback = outs["fallback"].numpy()[:rows] if kind != "greedy" else None
        return tokens, lp, fallback
