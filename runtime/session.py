"""The engine's onnxruntime session, over its KV-cache interface (optimizer.core.engine_format).

`DecoderSession.forward` runs one step for a batch with concatenation semantics: the new
tokens, the attention mask over past + new tokens, their positions and the past arrays
(B, n_kv, P, hd); it returns logits and the present arrays (B, n_kv, P+S, hd). Evaluation
and build verification use it (paged engines: `runtime.paged.sequence_logits`). Serving uses
`runtime.executors`, which own the cache buffers of the engine's layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from optimizer.core.engine_format import KvCacheSpec
from optimizer.core.errors import EngineError
from runtime import hugepages
from runtime.int4_sm90 import WITHOUT_LAYOUT
from runtime.multi_step import decode_steps_wanted

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def kv_dtype(name: str) -> Any:
    """The numpy type of a KV cache's values: fp32, fp16, or the quantized caches' int8 / fp8
    (float8 E4M3, the paged layout's; one byte a value). ml_dtypes, which numpy needs for float8,
    is imported only for fp8 caches: its import takes ~0.8 s of a process's start here."""
    if name == "fp8":
        import ml_dtypes

        return np.dtype(ml_dtypes.float8_e4m3fn)
    return {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}[name]


def kv_bind_type(name: str):
    """The element type a cache buffer is bound with: onnxruntime takes numpy types, or ONNX type
    numbers for the types numpy lacks (float8 E4M3: onnx.TensorProto.FLOAT8E4M3FN)."""
    if name == "fp8":
        from onnx import TensorProto

        return TensorProto.FLOAT8E4M3FN
    return kv_dtype(name)


LOGITS_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# onnxruntime CUDA kernel choices (session config entries; older onnxruntime ignores them).
# benchmarks/gpu_matmul_nbits.py on an H200, one 4096 x 14336 linear: cuBLAS auto-tuning took the
# fp16 MatMul from 65.8 to 56.0 us at M=1 and 66.5 to 57.6 at M=64.
CUDA_SESSION_CONFIG = {"ep.cuda.enable_gemm_auto_tune": "1"}
# 4-bit MatMulNBits on CUDA, a session-wide choice (`int4_kernels`):
#   rows     TensorRT-LLM's mixed-input kernels (fpA_intB: a CUTLASS GEMM from 2 rows, its GEMV at
#            one; weights repacked at load). One 4096 x 14336 block-32 linear: 99.4 -> 76.6 us at
#            M=64 against onnxruntime's own path (dequantize the weight, then cuBLAS). Nodes it
#            does not take (in the stock wheel: zero points, some block sizes) keep onnxruntime's.
#   one-row  onnxruntime's own kernels (MatMulFloat4BitsKernelM1 at one row): a Llama-3.2-1B-shaped
#            int4 decode step spent 570 us in them against 718 us in the fpA_intB GEMV (kernel
#            profiles, onnxruntime-genai's engine and ours, benchmarks/results/gpu-decode).
#   auto     one-row for engines of one slot (batch-1 decoding), rows otherwise.
INT4_KERNELS = {"rows": {"ep.cuda.fpa_intb_gemm": "1"}, "one-row": {"ep.cuda.fpa_intb_gemm": "0"}}
# Prompt tokens per iteration on CUDA, where prefills run batched (static executor) or packed
# with the decodes (paged). 512 requests of 128/128 on the Llama-3.1-8B shape, fp16, H200
# (benchmarks/results/gpu-throughput): 11,377 out tok/s at 2048, 12,485 at 8192, 13,279 at 16384,
# 11,618 at 32768. 8192 (as vLLM's and TensorRT-LLM's default token budgets): a larger one stalls
# running decodes for longer while a prefill runs.
CUDA_PREFILL_BUDGET = 8192


def int4_kernel_choice(requested: str | None, slots: int | None) -> str:
    """The CUDA 4-bit kernel family for a session: an explicit choice (or OPTIMIZER_CUDA_INT4)
    wins; auto picks by the engine's slots."""
    choice = requested or os.environ.get("OPTIMIZER_CUDA_INT4", "auto")
    if choice == "auto":
        return "one-row" if slots == 1 else "rows"
    if choice not in INT4_KERNELS:
        raise EngineError(f"unknown int4 kernel choice {choice!r}",
                          hint="choose auto, rows (batches) or one-row (batch-1 decoding)")
    return choice


def make_session_options(threads: int | None, quantization: dict[str, Any] | None = None,
                         provider: str = "CPUExecutionProvider", int4_kernels: str = "rows",
                         custom_ops: Sequence[str] = ()) -> ort.SessionOptions:
    """`custom_ops`: the custom-op domains the engine's graph uses (the manifest's "custom_ops"):
    our library (runtime.custom_ops) is registered for them, with its CUDA kernels on CUDA."""
    opts = ort.SessionOptions()
    if custom_ops:
        from runtime import custom_ops as ops

        unknown = set(custom_ops) - {ops.DOMAIN}
        if unknown:
            raise EngineError(f"this engine's graph uses custom ops of {sorted(unknown)}, which this runtime lacks",
                              hint="rebuild the engine with this version of the optimizer")
        ops.register(opts, cuda=provider == PROVIDERS["cuda"])
    if provider == PROVIDERS["cuda"]:
        for key, value in {**CUDA_SESSION_CONFIG, **INT4_KERNELS[int4_kernels]}.items():
            opts.add_session_config_entry(key, value)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Standard-op engines (TensorRT target): onnxruntime fuses DequantizeLinear(int4) + MatMul
    # into MatMulNBits at load, by default with int8 activations (accuracy level 4); use the
    # engine's own accuracy level instead, so it computes what it was verified to compute.
    level = (quantization or {}).get("accuracy_level", 0)
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(level))
    return opts


def disabled_optimizers(quantization: dict[str, Any] | None) -> tuple[str, ...]:
    """onnxruntime graph optimizers to turn off for an engine, from its manifest's quantization.

    FP8 engines: onnxruntime 1.2x-1.3x's QDQSelectorActionTransformer rewrites
    DequantizeLinear(float8) -> MatMul into MatMulIntegerToFloat, whose kernel takes only
    int8, and the session then fails to load ("Type 'tensor(float8e4m3fn)' ... of operator
    (MatMulIntegerToFloat) is invalid"). Without it the Q/DQ graph runs as written (exactly)."""
    if (quantization or {}).get("method") == "fp8":
        return ("QDQSelectorActionTransformer",)
    return ()


def check_layout_provider(kv: KvCacheSpec, provider: str) -> None:
    """Paged engines run on CUDA only, int8 KV caches on CPU only: say so before onnxruntime
    fails to find a kernel."""
    if kv.dtype == "int8" and provider != PROVIDERS["cpu"]:
        raise EngineError(f"this engine's KV cache is int8, which onnxruntime's CPU attention kernel "
                          f"reads, and it was opened on {provider}",
                          hint="open it on the CPU (--provider cpu), or rebuild without --kv-cache-dtype int8")
    if kv.layout == "paged" and provider != PROVIDERS["cuda"]:
        raise EngineError(f"this engine has the paged KV-cache layout, whose attention (onnxruntime's "
                          f"PagedAttention) runs on CUDA only, and it was opened on {provider}",
                          hint="open it with provider 'cuda' (--provider cuda) where onnxruntime-gpu and an "
                               "NVIDIA GPU are present, or rebuild with --kv-layout static for CPU")


def check_compute_capability(quantization: dict[str, Any] | None, have: str) -> None:
    """An engine whose weights are stored for one GPU generation (int4 in the Hopper layout,
    passes/prepack_int4.py) opens on that generation only."""
    wanted = (quantization or {}).get("compute_capability")
    if wanted and wanted != have:
        raise EngineError(f"this engine's quantized weights are stored for GPUs of compute capability {wanted} "
                          f"({quantization.get('format', '')}), and this GPU's is {have}",
                          hint=f"rebuild it {WITHOUT_LAYOUT}")


def check_sm90_kernel(quantization: dict[str, Any] | None) -> None:
    """An engine with int4 weights in the Hopper layout opens only where onnxruntime has the
    kernel that reads it (runtime.int4_sm90)."""
    if (quantization or {}).get("compute_capability") != "9.0":
        return
    from runtime.int4_sm90 import kernel_missing, missing_kernel_hint, missing_kernel_message

    said = kernel_missing()
    if said:
        raise EngineError(missing_kernel_message(said), hint=missing_kernel_hint("rebuild"))


def cuda_graph_wanted(requested: bool | None) -> bool:
    """An explicit choice wins; otherwise on unless OPTIMIZER_CUDA_GRAPH=0."""
    if requested is not None:
        return requested
    return os.environ.get("OPTIMIZER_CUDA_GRAPH", "1") != "0"


def use_fp8_deepgemm(quantization: dict[str, Any] | None, provider: str) -> bool:
    """Whether onnxruntime's native SM90 FP8 GEMM (DeepGEMM) is turned on for this session:
    FP8 engines on CUDA, unless OPTIMIZER_FP8_DEEPGEMM=0. onnxruntime 1.31 reads the switch
    (the environment variable ORT_FP8_MATMUL_DEEPGEMM) when it makes each
    MatMulBlockQuantizedFp8Weight kernel, and takes the native path for block size 128 with an
    activation scale on SM90 GPUs at the shapes it supports; elsewhere the kernel dequantizes
    the weight to fp16 as before. A ORT_FP8_MATMUL_DEEPGEMM the user set is left as it is."""
    return ((quantization or {}).get("method") == "fp8" and provider == PROVIDERS["cuda"]
            and os.environ.get("OPTIMIZER_FP8_DEEPGEMM", "1") != "0")


def eager_run_options() -> ort.RunOptions:
    """Run options for a run that must not be captured (graph annotation id -1)."""
    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", "-1")
    return options


def resolve_provider(provider: str) -> str:
    name = PROVIDERS.get(provider.lower(), provider)
    available = ort.get_available_providers()
    if name not in available:
        short = [k for k, v in PROVIDERS.items() if v in available]
        raise EngineError(f"execution provider {provider!r} is not available in this onnxruntime",
                          hint=f"available here: {', '.join(short or available)}; "
                               "for cuda install onnxruntime-gpu")
    return name


class DecoderSession:
    def __init__(self, model_path: Path, kv: KvCacheSpec, provider: str = "cpu",
                 threads: int | None = None, quantization: dict[str, Any] | None = None,
                 huge_pages: bool | None = None, cuda_graph: bool | None = None,
                 int4_kernels: str | None = None, custom_ops: Sequence[str] = ()) -> None:
        """`quantization`: the manifest's section, which settles a few onnxruntime options.
        `custom_ops`: the manifest's custom-op domains (make_session_options registers them).
        `huge_pages`: on CPU, back the weights with 2 MiB pages (`runtime.hugepages`, process-wide;
        None: yes unless OPTIMIZER_HUGE_PAGES=0).
        `cuda_graph`: on CUDA, let decode steps be captured and replayed as CUDA graphs
        (`runtime.graph_executor`; None: yes unless OPTIMIZER_CUDA_GRAPH=0). Every other run of
        the session then passes `eager_run`, which tells onnxruntime not to capture it.
        `int4_kernels`: on CUDA, rows, one-row or auto (INT4_KERNELS; None: OPTIMIZER_CUDA_INT4,
        else auto)."""
        self.kv = kv
        self.provider = resolve_provider(provider)
        check_layout_provider(kv, self.provider)
        needs = (quantization or {}).get("provider")  # engines with one provider's kernels only
        if needs and self.provider != PROVIDERS.get(needs, needs):
            raise EngineError(f"this engine's quantized linears use {needs}-only onnxruntime kernels "
                              f"({quantization.get('format', '')}), and it was opened on {self.provider}",
                              hint=f"use provider {needs!r} (--provider {needs}), or rebuild with "
                                   "--target onnxruntime for an engine that runs on CPU too")
        if self.provider != PROVIDERS["cpu"] and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN libraries from the pip-installed nvidia packages
        if needs and (quantization or {}).get("compute_capability"):
            from runtime.gpu_memory import compute_capability

            check_compute_capability(quantization, compute_capability())
            check_sm90_kernel(quantization)
        self.cuda_graph = self.provider == PROVIDERS["cuda"] and cuda_graph_wanted(cuda_graph)
        self.provider_options = {"enable_cuda_graph": "1"} if self.cuda_graph else {}
        # decode steps per host round trip (runtime.multi_step): engines with captured steps, whose
        # sessions then run on a stream of ours, so that copies queue in order with them
        self.decode_steps = decode_steps_wanted() if self.cuda_graph else 1
        self.stream = None
        if self.decode_steps > 1:
            from runtime.cuda_stream import Stream

            self.stream = Stream()
            self.provider_options["user_compute_stream"] = str(self.stream.address)
        self.eager_run = eager_run_options() if self.cuda_graph else None
        self.int4_kernels = int4_kernel_choice(int4_kernels, kv.slots)
        options = make_session_options(threads, quantization, self.provider, self.int4_kernels, custom_ops)
        if use_fp8_deepgemm(quantization, self.provider):
            os.environ.setdefault("ORT_FP8_MATMUL_DEEPGEMM", "1")
        self.session = ort.InferenceSession(str(model_path), options,
                                            providers=[(self.provider, self.provider_options)],
                                            disabled_optimizers=list(disabled_optimizers(quantization)) or None)
        self.huge_pages = (hugepages.promote() if hugepages.wanted(huge_pages) and self.provider == PROVIDERS["cpu"]
                           else None)
        self._graph_ids = 0  # CUDA graph annotation ids handed out (each captured step has its own)
        self.executors: dict = {}  # kept for the session's life: captured graphs use their buffers
        self.said_no_graph = False  # the runtime said once why decode steps are not captured
        self.said_no_prefix_cache = False  # ... and why prompts are not served from the prefix cache
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_names = {i.name for i in self.session.get_inputs()}
        self._np_dtype = kv_dtype(kv.dtype)

    def new_graph_id(self) -> int:
        """A CUDA graph annotation id no other captured step of this session uses."""
        self._graph_ids += 1
        return self._graph_ids

    def _step_feeds(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
                    past: list[np.ndarray], logits_from: int = 0) -> dict[str, np.ndarray]:
        """The feeds of one step with concatenation semantics (forward, prefill_logits)."""
        feeds = {"input_ids": input_ids.astype(np.int64, copy=False),
                 "attention_mask": attention_mask.astype(np.int64, copy=False)}
        if "position_ids" in self.input_names:  # static engines drop it: GQA does not read it
            feeds["position_ids"] = position_ids.astype(np.int64, copy=False)
        if "logits_from" in self.input_names:  # engines with slice-logits; others return all positions
            feeds["logits_from"] = np.asarray([logits_from], np.int64)
        if "logits_positions" in self.input_names:  # static-layout engines: positions per row
            rows, steps = input_ids.shape
            feeds["logits_positions"] = np.tile(np.arange(logits_from, steps, dtype=np.int64), (rows, 1))
        for i in range(self.kv.num_layers):
            feeds[self.kv.past_key.format(i=i)] = past[2 * i]
            feeds[self.kv.past_value.format(i=i)] = past[2 * i + 1]
        return feeds

    def prefill_logits(self, input_ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Every position's logits (B, S, V) of B sequences, each a prefill from an empty cache
        (one run for the batch; perplexity). With `out`, a preallocated (B, S, V) array of the
        logits' dtype (`logits_type`), onnxruntime writes the logits there (bound by pointer:
        no allocation, no copy per run) and `out` is returned; the other outputs stay in
        onnxruntime's memory. Without `out` (or for an engine whose vocabulary size is not fixed
        in its graph), the logits `forward` returns."""
        self._refuse_paged()
        rows, steps = input_ids.shape
        past = self.empty_cache(rows)
        dtype, vocab = self.logits_type()
        if out is None or vocab is None:
            return self.forward(input_ids, np.ones((rows, steps), np.int64), np.tile(np.arange(steps), (rows, 1)),
                                past)[0]
        if out.shape != (rows, steps, vocab) or out.dtype != dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {np.dtype(dtype).name} array of shape "
                             f"{(rows, steps, vocab)}, not {out.dtype.name} {out.shape}")
        feeds = self._step_feeds(input_ids, np.ones((rows, steps), np.int64),
                                 np.tile(np.arange(steps), (rows, 1)), past)
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        device = "cuda" if self.provider == PROVIDERS["cuda"] else "cpu"
        for name in self.output_names:
            if name == "logits":
                binding.bind_output(name, "cpu", 0, dtype, out.shape, out.ctypes.data)
            else:
                binding.bind_output(name, device)
        self.session.run_with_iobinding(binding, self.eager_run)
        return out

    def _refuse_paged(self) -> None:
        if self.kv.layout == "paged":
            raise EngineError("a paged engine takes packed tokens and block tables, not past arrays",
                              hint="use runtime.paged.sequence_logits or an executor (runtime.executors)")

    def logits_type(self) -> tuple[type, int | None]:
        """The logits' numpy dtype and vocabulary size (None where the graph leaves it symbolic)."""
        logits = next(o for o in self.session.get_outputs() if o.name == "logits")
        vocab = logits.shape[-1]
        return LOGITS_DTYPES[logits.type], vocab if isinstance(vocab, int) else None

    def empty_cache(self, batch: int) -> list[np.ndarray]:
        """Zero-length past for a prefill: [k0, v0, k1, v1, ...], each (B, n_kv, 0, hd)."""
        empty = np.zeros((batch, self.kv.num_kv_heads, 0, self.kv.head_dim), self._np_dtype)
        return [empty] * (2 * self.kv.num_layers)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
                past: list[np.ndarray], logits_from: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
        """(B, S) ids, (B, T) mask, (B, S) positions, past -> logits (B, S - logits_from, V), present.

        Concatenation semantics on any engine (a static-layout engine's kernel then appends
        into a new buffer instead of in place); the runtime's executors use the layouts.
        Paged engines have no per-sequence past: `runtime.paged.sequence_logits` runs them."""
        self._refuse_paged()
        feeds = self._step_feeds(input_ids, attention_mask, position_ids, past, logits_from)
        outputs = dict(zip(self.output_names, self.session.run(None, feeds, self.eager_run)))
        present = []
        for i in range(self.kv.num_layers):
            present += [outputs[self.kv.present_key.format(i=i)], outputs[self.kv.present_value.format(i=i)]]
        return outputs["logits"], present
