"""Every check a build makes before its expensive work, with errors that say what to change.

`validate_build` runs them in order: option values and choices, the passes (names, order, and
those that the chosen options need, as the pass registry declares), the target, the KV-cache
options, the accuracy gate, and the output directory.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import onnx_ir as ir

from calibration import check_streamable
from calibration.config import AwqConfig, AwqGptqConfig, GptqConfig
from calibration.data import check_source, parse_spec
from optimizer.core.artifact import check_output_dir
from optimizer.core.errors import InputError
from optimizer.gate import parse_limit
from optimizer.options import BuildSection, check_choices
from passes.pipeline import validate_pass_names

if TYPE_CHECKING:
    from optimizer.pipeline import BuildOptions

STANDARD_DOMAINS = ("", "ai.onnx")
RESUMABLE = (AwqConfig, GptqConfig, AwqGptqConfig)  # calibrated integer methods (calibration.layer_store)


def validate_build(opts: "BuildOptions") -> None:
    check_choices(opts)
    if opts.accuracy_level not in (0, 1, 2, 3, 4):
        raise InputError(f"accuracy level must be 0..4, got {opts.accuracy_level}",
                         hint="0 = fp32 compute (default), 4 = int8 activations (fastest on CPU)")
    if opts.quant is not None:
        opts.quant.validate()
        if opts.stream:
            check_streamable(opts.quant)
    if opts.resume and not isinstance(opts.quant, RESUMABLE):
        raise InputError("--resume continues a killed AWQ / GPTQ / AWQ-GPTQ build; this build "
                         + ("does not quantize" if opts.quant is None else f"is {opts.quant.describe()}"),
                         hint="drop --resume")
    check_pass_options(opts)
    validate_pass_names([d for d in opts.dump_ir_after if d != "all"], "--dump-ir-after pass")
    validate_target(opts)
    if opts.max_seq_len is not None and opts.max_seq_len < 1:
        raise InputError(f"max sequence length must be positive, got {opts.max_seq_len}")
    validate_kv_options(opts)
    if opts.max_ppl_increase is not None:
        parse_limit(opts.max_ppl_increase)
        parse_spec(opts.gate_eval)
    check_output_dir(opts.out, opts.overwrite)


def check_pass_options(opts: "BuildOptions") -> None:
    """A build option set away from its default needs the passes that implement it (the
    registry's `option` and `requires`); resolving the pass names checks names and order."""
    from passes import REGISTRY

    names = opts.pass_names
    defaults = {f.name: f.default for f in dataclasses.fields(BuildSection)}
    for info in REGISTRY.values():
        if info.option is None:
            continue
        value = getattr(opts, info.option)
        if value is None or value == defaults.get(info.option):
            continue
        missing = [p for p in (*info.requires, info.name) if p not in names]
        if missing:
            shown = "" if info.option == "quant" else f" {value}"
            raise InputError(f"--{info.option.replace('_', '-')}{shown} needs the {' and '.join(missing)} "
                             f"pass{'es' if len(missing) > 1 else ''}, which --passes leaves out",
                             hint=f"add {', '.join(missing)} to --passes, or use --passes default")


def validate_target(opts: "BuildOptions") -> None:
    """The TensorRT target runs only passes whose output is standard ONNX, on a concat cache;
    passes whose output runs on CUDA only need --target onnxruntime-cuda."""
    if opts.target == "onnxruntime-cuda":
        validate_cuda_target(opts)
    check_cuda_only_passes(opts)
    if opts.target != "tensorrt":
        return
    from passes import REGISTRY

    onnxruntime_only = [p for p in opts.pass_names if "tensorrt" not in REGISTRY[p].targets]
    if onnxruntime_only:
        raise InputError(f"pass {onnxruntime_only[0]!r} emits onnxruntime-only ops, and --target tensorrt "
                         "needs standard ONNX", hint="use --passes tensorrt (the default for this target); "
                                                     "`optimize passes` lists each pass's targets")
    if opts.quant is not None and opts.quant.method != "fp8" and not opts.quant.symmetric:
        raise InputError("TensorRT's int4/int8 weight dequantization takes no zero points, so --asym "
                         "weights cannot be built for --target tensorrt", hint="use --sym with --target tensorrt")
    if opts.kv_layout not in ("auto", "concat"):
        raise InputError(f"--kv-layout {opts.kv_layout} needs onnxruntime's attention kernels; "
                         "the TensorRT target keeps attention in standard ops with a concat cache",
                         hint="drop --kv-layout (or use concat) with --target tensorrt")


def check_cuda_only_passes(opts: "BuildOptions") -> None:
    """A pass whose output only CUDA runs (the registry's targets) needs --target
    onnxruntime-cuda; prepack-int4-sm90 also needs what its kernel takes: symmetric int4
    weights in blocks of 64 or 128 and float16 activations."""
    from passes import REGISTRY
    from passes.prepack_int4 import BLOCKS

    cuda_only = [p for p in opts.pass_names if REGISTRY[p].targets == ("cuda",)]
    if cuda_only and opts.target != "onnxruntime-cuda":
        raise InputError(f"pass {cuda_only[0]!r} writes an engine that runs on CUDA only",
                         hint="add --target onnxruntime-cuda (built and verified on a GPU)")
    if "prepack-int4-sm90" not in opts.pass_names:
        return
    quant = opts.quant
    if (quant is None or quant.method == "fp8" or quant.bits != 4 or not quant.symmetric
            or quant.group_size not in BLOCKS or opts.dtype != "fp16"):
        raise InputError("pass 'prepack-int4-sm90' stores int4 weights for onnxruntime's Hopper kernel, which "
                         "takes symmetric 4-bit weights in groups of 64 or 128 and float16 activations",
                         hint="build with --quant int4 --sym --group-size 128 (or 64) --dtype fp16")
    check_sm90_kernel()


def check_sm90_kernel() -> None:
    """Before anything is loaded: the GPU here is a compute capability 9.0 one (the engine is
    verified on it) and the installed onnxruntime-gpu has the kernel that reads the layout."""
    from runtime.gpu_memory import compute_capability
    from runtime.int4_sm90 import WITHOUT_LAYOUT, kernel_missing, missing_kernel_hint, missing_kernel_message

    have = compute_capability()
    if have != "9.0":
        raise InputError(f"pass 'prepack-int4-sm90' writes an engine for compute capability 9.0 GPUs (H100, "
                         f"H200), and it is verified on this machine's GPU, whose capability is {have}",
                         hint=f"build it on an H100 or H200, or build {WITHOUT_LAYOUT}")
    said = kernel_missing()
    if said:
        raise InputError(missing_kernel_message(said), hint=missing_kernel_hint("build"))


def validate_cuda_target(opts: "BuildOptions") -> None:
    """onnxruntime-cuda engines are verified on the CUDA provider: it must be here, and FP8's
    CUDA kernel takes float16 / bfloat16 activations only."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise InputError("--target onnxruntime-cuda builds an engine that uses CUDA-only kernels and is "
                         "verified on onnxruntime's CUDA provider, which this onnxruntime does not have",
                         hint="build on a machine with an NVIDIA GPU and onnxruntime-gpu installed, or use "
                              "--target onnxruntime (runs on CPU and CUDA)")
    if opts.quant is not None and opts.quant.method == "fp8" and opts.dtype != "fp16":
        raise InputError(f"onnxruntime's CUDA FP8 kernel takes float16 activations; --dtype is {opts.dtype}",
                         hint="use --dtype fp16 with --target onnxruntime-cuda")


def validate_kv_options(opts: "BuildOptions") -> None:
    if opts.kv_layout in ("static", "paged") and "fuse-attention" not in opts.pass_names:
        raise InputError(f"the {opts.kv_layout} KV-cache layout needs fused attention, which --passes leaves out",
                         hint="keep fuse-attention in --passes, or use --kv-layout concat")
    if opts.kv_layout == "paged":
        validate_paged(opts)
    validate_kv_cache_dtype(opts)
    for name in ("kv_slots", "kv_capacity", "kv_block_size", "kv_blocks"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if opts.kv_capacity and opts.max_seq_len and opts.kv_capacity > opts.max_seq_len:
        raise InputError(f"--kv-capacity {opts.kv_capacity} exceeds --max-seq-len {opts.max_seq_len}",
                         hint="a slot cannot hold more positions than the engine's rotary tables cover")


def validate_kv_cache_dtype(opts: "BuildOptions") -> None:
    """The int8 cache is GroupQueryAttention's (CPU kernel), with the static or concat layout; the
    fp8 cache is PagedAttention's (CUDA kernel), with the paged layout."""
    dtype = opts.kv_cache_dtype
    if dtype == "auto":
        return
    if dtype == "int8" and opts.kv_layout == "paged":
        raise InputError("the paged layout's kernel (PagedAttention, CUDA) stores its cache as fp8 here, not int8",
                         hint="use --kv-cache-dtype fp8 with --kv-layout paged, or --kv-layout static for int8 (CPU)")
    if dtype == "fp8" and opts.kv_layout != "paged":
        raise InputError(f"the fp8 KV cache is the paged layout's (onnxruntime's PagedAttention on CUDA); "
                         f"--kv-layout is {opts.kv_layout}",
                         hint="add --kv-layout paged (CUDA, --dtype fp16), or use --kv-cache-dtype int8 on the CPU")
    if dtype == "int8" and opts.target != "onnxruntime":
        raise InputError(f"the int8 KV cache runs on onnxruntime's CPU attention kernel; --target {opts.target} "
                         "cannot take it", hint="use --target onnxruntime, or drop --kv-cache-dtype")
    if dtype == "fp8" and opts.target == "tensorrt":
        raise InputError("the fp8 KV cache is onnxruntime's PagedAttention kernel; --target tensorrt cannot take it",
                         hint="use --target onnxruntime-cuda, or drop --kv-cache-dtype")
    if opts.random_weights and not opts.tokenizer:
        raise InputError(f"the {dtype} KV cache is calibrated on text, and a random-weight model has no tokenizer",
                         hint=f"pass --tokenizer with --random-weights, or drop --kv-cache-dtype {dtype}")
    check_source(parse_spec(opts.kv_calib).source)


def validate_paged(opts: "BuildOptions") -> None:
    """Paged engines run onnxruntime's PagedAttention, a CUDA kernel of float16 inputs, and the
    build verifies them there: the CUDA provider must be present."""
    import onnxruntime as ort

    block = opts.kv_block_size  # None: the model's default (optimizer.pipeline.block_size)
    if block is not None and (block < 16 or block & (block - 1)):
        raise InputError(f"--kv-block-size {block}: onnxruntime's PagedAttention takes blocks of a power of "
                         "two tokens, at least 16", hint="use 16, 32, 64, ...")
    if opts.dtype != "fp16":
        raise InputError(f"the paged KV-cache layout's kernel (onnxruntime's PagedAttention) takes float16; "
                         f"--dtype is {opts.dtype}", hint="use --dtype fp16 with --kv-layout paged")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise InputError("the paged KV-cache layout runs on onnxruntime's PagedAttention, a CUDA-only kernel, "
                         "and the build verifies the engine on the CUDA provider, which this onnxruntime "
                         "does not have", hint="build on a machine with an NVIDIA GPU and onnxruntime-gpu, "
                                               "or use --kv-layout static (slots written in place; CPU and CUDA)")


def check_standard_ops(model: ir.Model) -> None:
    nonstandard = sorted({f"{n.domain}::{n.op_type}" for n in model.graph if n.domain not in STANDARD_DOMAINS})
    if nonstandard:
        raise InputError("the TensorRT target's graph still has non-standard ops: " + ", ".join(nonstandard),
                         hint="this is a bug in the tensorrt pipeline; please report it with the model's config")
