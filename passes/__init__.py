"""Graph passes over onnx_ir models: an explicit registry, no package scanning.

Each entry names a pass, says what it does and which targets run it, and builds the onnx_ir
pass object from the build's `PassContext`. The pipeline (`passes.pipeline.run_passes`)
runs them in order and reports, per pass, whether it changed the graph, how the op counts
moved and the pass's own notes (what it fused, or why it matched nothing); that report goes
into the manifest. Order matters: later fusions match what earlier ones produced, and each
entry says which passes must run before it (`after`, checked when a pipeline is resolved).
A pass that implements a build option names it (`option`, with the passes it `requires`):
the build refuses that option when its pass is left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import onnx_ir.passes as ir_passes
from onnx_ir.passes import common

from passes import fold_norm_casts, fuse_activation, fuse_rms_norm, fuse_skip_rms_norm
from passes._rules import RulePass
from passes.custom_attention import CustomAttention
from passes.custom_linear import CustomLinear
from passes.fold_constants import FoldConstants
from passes.fuse_attention import FuseAttention
from passes.fuse_swiglu import FuseSwiGLU
from passes.greedy_tokens import GreedyTokens
from passes.kv_layout import KvCacheLayout
from passes.lower_quantized_matmul import LowerQuantizedMatMul
from passes.pack_matmuls import PackSiblingMatMuls
from passes.prepack_int4 import PrepackInt4Sm90
from passes.quantize_kv_cache import QuantizeKvCache
from passes.slice_logits import SliceLogits
from passes.unread_outputs import DropUnreadOptionalOutputs


@dataclass(frozen=True)
class PassContext:
    codes: dict[str, Any] = field(default_factory=dict)  # module name -> IntWeight | Fp8Weight
    accuracy_level: int = 0  # MatMulNBits: 0 = fp32 compute, 4 = int8 activations (faster)
    dtype: str = "fp32"  # engine compute dtype
    max_positions: int = 4096  # rotary caches of fused attention cover positions [0, max_positions)
    kv_layout: str = "auto"  # auto | static | paged | concat (auto: static where attention is fused)
    kv_block_size: int = 16  # tokens per block of the paged layout
    weight_format: str = "matmulnbits"  # int4/int8 linears: matmulnbits (onnxruntime) | dequantize (standard ops)
    kv_scales: tuple[tuple[float, float], ...] = ()  # int8 / fp8 KV cache: (k, v) scale per layer; () = float
    kv_cache_dtype: str = "auto"  # auto | int8 (GroupQueryAttention, CPU) | fp8 (PagedAttention, CUDA)


@dataclass(frozen=True)
class PassInfo:
    name: str
    description: str
    build: Callable[[PassContext], ir_passes.PassBase]
    targets: tuple[str, ...] = ("cpu", "cuda")  # execution providers whose kernels the result uses
    after: tuple[str, ...] = ()  # passes that must run before this one when both run
    option: str | None = None  # the build option (a BuildOptions field) whose non-default value it implements
    requires: tuple[str, ...] = ()  # passes that must also run for it to implement that option


REGISTRY: dict[str, PassInfo] = {
    info.name: info
    for info in (
        PassInfo("lower-quantized-matmul", "quantized linears (MatMul + float weight) -> MatMulNBits "
                                           "with packed int4/int8 codes, scales and zero points (or, for "
                                           "standard-op targets, blocked DequantizeLinear + MatMul); FP8 "
                                           "linears -> QuantizeLinear/DequantizeLinear around MatMul",
                 lambda ctx: LowerQuantizedMatMul(ctx.codes, ctx.accuracy_level, ctx.weight_format),
                 targets=("cpu", "cuda", "tensorrt"), option="quant"),
        PassInfo("fuse-rms-norm", "RMSNorm (Pow ReduceMean Add Sqrt Reciprocal Mul Mul) -> "
                                  "RMSNormalization (opset 23)",
                 lambda ctx: RulePass(fuse_rms_norm.RULES, "RMSNorm -> RMSNormalization",
                                      min_opset=fuse_rms_norm.RMS_NORM_OPSET)),
        PassInfo("fold-norm-casts", "fp16/bf16 engines: Cast(fp32) -> RMSNormalization -> Cast back -> "
                                    "RMSNormalization in the compute dtype (fp32 statistics inside)",
                 lambda ctx: RulePass(fold_norm_casts.RULES, "fp32 norm between Casts -> half-precision norm"),
                 after=("fuse-rms-norm",)),
        PassInfo("fuse-skip-rms-norm", "residual Add + RMSNormalization -> "
                                       "SkipSimplifiedLayerNormalization",
                 lambda ctx: RulePass(fuse_skip_rms_norm.RULES, "Add + RMSNorm -> SkipSimplifiedLayerNormalization",
                                      uses_ms_domain=True),
                 after=("fuse-rms-norm", "fold-norm-casts")),
        PassInfo("fuse-attention", "rotary embedding + masked attention + concat KV cache -> "
                                   "GroupQueryAttention (own rotary, causal / sliding window, softcap)",
                 lambda ctx: FuseAttention(ctx.max_positions)),
        PassInfo("pack-qkv", "q/k/v projections reading one input -> one MatMul/MatMulNBits "
                             "(GQA's packed QKV input)",
                 lambda ctx: PackSiblingMatMuls(3, "q/k/v"), after=("lower-quantized-matmul", "fuse-attention")),
        PassInfo("pack-gate-up", "gate/up projections reading one input -> one MatMul/MatMulNBits + Split",
                 lambda ctx: PackSiblingMatMuls(2, "gate/up"), after=("lower-quantized-matmul",)),
        PassInfo("prepack-int4-sm90", "int4 MatMulNBits weights (block 64/128, symmetric, fp16) stored in the "
                                      "layout of onnxruntime's native Hopper mixed-input GEMM (weight_prepacked=2): "
                                      "engines for compute capability 9.0 GPUs only; only in the int4-sm90 pipeline",
                 lambda ctx: PrepackInt4Sm90(), targets=("cuda",),
                 after=("lower-quantized-matmul", "pack-qkv", "pack-gate-up")),
        PassInfo("fuse-activation", "SiLU (Mul(x, Sigmoid(x))) -> QuickGelu(alpha=1)",
                 lambda ctx: RulePass(fuse_activation.RULES, "SiLU -> QuickGelu", uses_ms_domain=True)),
        PassInfo("fuse-swiglu", "fp16 packed gate/up: Split -> QuickGelu(alpha=1) -> Mul -> optimizer.ops SwiGLU, "
                                "one kernel of our custom-op library (runtime/custom_ops: built with g++, and "
                                "nvcc for CUDA); only in the custom-ops pipeline",
                 lambda ctx: FuseSwiGLU(ctx.dtype), after=("pack-gate-up", "fuse-activation")),
        PassInfo("custom-linear", "fp16 MatMul by a constant weight -> optimizer.ops Linear (the weight stored "
                                  "(N, K); a tied lm_head reads the embedding table itself), 4-bit MatMulNBits -> "
                                  "LinearInt4 (its arrays as they are), a following SwiGLU folded in: one GEMV "
                                  "kernel at 1-4 rows on CUDA; only in the custom-ops pipeline",
                 lambda ctx: CustomLinear(ctx.dtype),
                 after=("pack-qkv", "pack-gate-up", "lower-quantized-matmul", "fuse-swiglu",
                        "slice-logits", "kv-layout")),  # they find the lm_head as a MatMul
        PassInfo("custom-linear-norm", "a skip RMS norm feeding only one of our Linears folded into it "
                                       "(NormLinear[Int4][SwiGLU]: each GEMV block normalizes its input)",
                 lambda ctx: CustomLinear(ctx.dtype, lower=False, folds=("norm",)),
                 after=("custom-linear", "fuse-skip-rms-norm", "slice-logits")),  # the final norm stays apart
        PassInfo("custom-linear-chain", "a LinearInt4 feeding only a NormLinearInt4[SwiGLU] folded into it "
                                        "(LinearInt4NormLinearInt4[SwiGLU]: on CUDA at batch the norm's kernel adds "
                                        "the first GEMM's K parts, no conversion kernel between)",
                 lambda ctx: CustomLinear(ctx.dtype, lower=False, folds=("chain",)), after=("custom-linear-norm",)),
        PassInfo("custom-attention", "fp16 static-layout GroupQueryAttention -> optimizer.ops CachedAttention "
                                     "(rotary, cache writes and attention in one CUDA kernel a layer; the same "
                                     "contract); only in the custom-ops pipeline",
                 lambda ctx: CustomAttention(ctx.dtype), after=("kv-layout", "quantize-kv-cache")),
        PassInfo("fold-constants", "evaluates nodes whose inputs are all constants (onnxscript's folder)",
                 lambda ctx: FoldConstants(), targets=("cpu", "cuda", "tensorrt")),
        PassInfo("slice-logits", "the lm_head reads positions [logits_from, S) only (a new input): "
                                 "prefill computes the last position's logits, not all S",
                 lambda ctx: SliceLogits(), targets=("cpu", "cuda", "tensorrt")),
        PassInfo("kv-layout", "KV-cache interface: static slots written in place (GQA shared buffer), "
                              "paged blocks (GQA -> PagedAttention, CUDA), or concat",
                 lambda ctx: KvCacheLayout(ctx.kv_layout, ctx.kv_block_size),
                 targets=("cpu", "cuda", "tensorrt"),  # concat there: attention stays standard ops
                 after=("fuse-attention", "slice-logits"), option="kv_layout"),
        PassInfo("greedy-tokens", "a second output, greedy_tokens = ArgMax(logits): greedy decode steps "
                                  "take token ids from the engine itself (one run per step on CUDA)",
                 lambda ctx: GreedyTokens()),
        PassInfo("quantize-kv-cache", "int8 / fp8 KV cache (when the build calibrated scales): "
                                      "GroupQueryAttention stores K/V as int8 (CPU), PagedAttention as float8 "
                                      "E4M3 (CUDA), with one static scale per layer each",
                 lambda ctx: QuantizeKvCache(ctx.kv_scales, ctx.kv_cache_dtype), targets=("cpu", "cuda"),
                 after=("fuse-attention", "kv-layout"), option="kv_cache_dtype", requires=("fuse-attention",)),
        PassInfo("cse", "common subexpression elimination: merges identical nodes "
                        "(e.g. the per-layer views of shared RoPE tables)",
                 lambda ctx: common.CommonSubexpressionEliminationPass(), targets=("cpu", "cuda", "tensorrt")),
        PassInfo("dead-code", "removes nodes whose outputs nothing uses and unused opset imports; "
                              "optional outputs nothing reads become absent",
                 lambda ctx: ir_passes.Sequential(common.RemoveUnusedNodesPass(),
                                                  common.RemoveUnusedOpsetsPass(),
                                                  DropUnreadOptionalOutputs()),
                 targets=("cpu", "cuda", "tensorrt")),
    )
}

UNFUSED_PIPELINE: tuple[str, ...] = ("lower-quantized-matmul", "kv-layout", "cse", "dead-code")
DEFAULT_PIPELINE: tuple[str, ...] = (
    "lower-quantized-matmul", "fuse-rms-norm", "fold-norm-casts", "fuse-skip-rms-norm", "fuse-attention",
    "pack-qkv", "pack-gate-up", "fuse-activation", "fold-constants", "slice-logits", "kv-layout",
    "greedy-tokens", "quantize-kv-cache", "cse", "dead-code",
)
# The paged layout with float weights (serving at large batches on CUDA): gate and up stay two
# GEMMs, no Split of a packed output. Session 37, 8B shape, 512 rows on an H200: 17.8 against
# 18.7 ms of kernels a decode step, 1.04x the out tok/s of 512 requests of 128/128.
PAGED_PIPELINE: tuple[str, ...] = tuple(p for p in DEFAULT_PIPELINE if p != "pack-gate-up")
# The default pipeline with int4 weights stored for onnxruntime's Hopper kernel (CUDA, compute
# capability 9.0 only: --target onnxruntime-cuda; passes/prepack_int4.py).
INT4_SM90_PIPELINE: tuple[str, ...] = (*DEFAULT_PIPELINE[:DEFAULT_PIPELINE.index("cse")], "prepack-int4-sm90",
                                       *DEFAULT_PIPELINE[DEFAULT_PIPELINE.index("cse"):])
# The default pipeline with our own kernels where they replace several of onnxruntime's
# (runtime/custom_ops; the engine then needs that library, built on first use).
CUSTOM_OPS_PIPELINE: tuple[str, ...] = (*DEFAULT_PIPELINE[:DEFAULT_PIPELINE.index("fuse-activation") + 1],
                                        "fuse-swiglu",
                                        *DEFAULT_PIPELINE[DEFAULT_PIPELINE.index("fuse-activation") + 1:
                                                          DEFAULT_PIPELINE.index("cse")],
                                        "custom-linear", "custom-linear-norm", "custom-linear-chain",
                                        "custom-attention",
                                        *DEFAULT_PIPELINE[DEFAULT_PIPELINE.index("cse"):])
# Standard ONNX only (opset 21, no com.microsoft ops): norms, rotary and attention stay
# decomposed, quantized weights become DequantizeLinear; the TensorRT target's default.
TENSORRT_PIPELINE: tuple[str, ...] = ("lower-quantized-matmul", "fold-constants", "kv-layout", "cse", "dead-code")
PIPELINES: dict[str, tuple[str, ...]] = {"default": DEFAULT_PIPELINE, "paged": PAGED_PIPELINE,
                                         "int4-sm90": INT4_SM90_PIPELINE, "custom-ops": CUSTOM_OPS_PIPELINE,
                                         "unfused": UNFUSED_PIPELINE,
                                         "tensorrt": TENSORRT_PIPELINE, "none": ()}
