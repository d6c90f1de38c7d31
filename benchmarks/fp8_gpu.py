"""FP8 vs fp16 decode on a GPU through onnxruntime CUDA, in one run (issue 6's speed benchmark).

Builds engines of a Llama-3.2-1B-shaped model with random weights (the preset
`llama-3.2-1b`: 16 layers, hidden 2048, GQA 32/8, vocabulary 128256), one per variant, then
times batched decode through the runtime's static-slot executor on the CUDA provider: B
sequences of P random prompt tokens are prefilled, then N decode steps run at batch B
(greedy; IO binding, the cache written in place). Decode tokens/s = B * N / time, median of
R runs after a warm-up.

Variants:
- fp16:       float16 weights and compute (the baseline);
- fp8:        FP8 W8A8 E4M3 (per-channel weight scales, static per-tensor activation scales,
              calibrated on `--calib`), lowered as QuantizeLinear/DequantizeLinear around
              MatMul: the portable form (TensorRT fuses it; onnxruntime runs it unfused);
- fp8-cuda:   the same quantization lowered for onnxruntime's CUDA FP8 GEMM kernel
              (`--target onnxruntime-cuda`).

`--kernels` also times the single linear shapes of one decode step (M = B) in isolation:
fp16 MatMul, the Q/DQ form, and the FP8 GEMM form, which says where the time goes.

    python benchmarks/fp8_gpu.py --work /tmp/fp8 --tokenizer TOKENIZER_DIR --batch 16 \\
        --prompt-tokens 128 --decode-steps 64 --runs 3 --variants fp16,fp8,fp8-cuda --kernels

Random weights change nothing about speed; calibration text only sets the FP8 scales. A quick
CPU check of the script: `--config tiny-llama --provider cpu --variants fp16,fp8`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

VARIANTS = ("fp16", "fp8", "fp8-cuda")


def build(variant: str, out: Path, args: argparse.Namespace) -> Path:
    """The variant's engine under `out` (reused when a complete one is already there)."""
    from calibration import quant_config
    from optimizer.core.artifact import load_engine
    from optimizer.pipeline import BuildOptions, build_engine

    if (out / "manifest.json").exists():
        load_engine(out, verify=True, quiet=True)
        return out
    quant = None
    if variant.startswith("fp8"):
        quant = quant_config(method="fp8", bits=8, group_size=None, calib=args.calib, observer=args.observer)
    target = "onnxruntime-cuda" if variant == "fp8-cuda" else "onnxruntime"
    capacity = args.prompt_tokens + args.decode_steps + 8
    opts = BuildOptions(out=out, random_weights=True, config=args.config, tokenizer=args.tokenizer,
                        dtype="fp16", quant=quant, target=target, max_seq_len=max(capacity, 256),
                        kv_slots=args.batch, kv_capacity=capacity, quiet=not args.verbose)
    start = time.perf_counter()
    build_engine(opts)
    print(f"  built {variant} in {time.perf_counter() - start:.0f} s", flush=True)
    return out


class DecodeTimer:
    """One engine on the provider: each call prefills B fresh sequences of P random tokens and
    times N greedy decode steps at batch B, both the engine's step alone (executor.decode:
    inputs bound, the run, logits back on the host) and with the greedy choice."""

    def __init__(self, engine_dir: Path, args: argparse.Namespace) -> None:
        from runtime import SamplingParams
        from runtime.engine import Engine

        self.engine = Engine.load(engine_dir, provider=args.provider, verify=False)
        self.args = args
        self.vocab = self.engine.manifest["architecture"]["config"]["vocab_size"]
        self.params = SamplingParams(max_new_tokens=args.decode_steps + 2, ignore_eos=True)
        self.rng = np.random.default_rng(0)
        self.samples: list[tuple[float, float, float]] = []  # (prefill, engine steps, whole loop) seconds

    def __call__(self, record: bool = True) -> None:
        from runtime.executors import make_executor
        from runtime.sequence import Sequence

        a = self.args
        executor = make_executor(self.engine.session, slots=a.batch, capacity=a.prompt_tokens + a.decode_steps + 8)
        seqs = [Sequence(f"r{i}", self.rng.integers(0, self.vocab, a.prompt_tokens).tolist(), self.params)
                for i in range(a.batch)]
        start = time.perf_counter()
        for seq in seqs:
            executor.pool.admit(seq.request_id, seq.max_total_tokens)
            seq.append(int(np.argmax(executor.prefill(seq, 0, a.prompt_tokens))))
        prefill = time.perf_counter() - start
        engine_time = 0.0
        start = time.perf_counter()
        for _ in range(a.decode_steps):
            t = time.perf_counter()
            logits = executor.decode(seqs)
            engine_time += time.perf_counter() - t
            for seq, token in zip(seqs, np.argmax(logits.astype(np.float32), axis=-1)):
                seq.append(int(token))
        if record:
            self.samples.append((prefill, engine_time, time.perf_counter() - start))

    def last_logits(self, prompts: np.ndarray) -> np.ndarray:
        """(B, V) float32 logits of each prompt's last position (one prefill per row)."""
        from runtime.executors import make_executor
        from runtime.sequence import Sequence

        a = self.args
        executor = make_executor(self.engine.session, slots=len(prompts), capacity=a.prompt_tokens + a.decode_steps + 8)
        rows = []
        for i, ids in enumerate(prompts):
            seq = Sequence(f"c{i}", ids.tolist(), self.params)
            executor.pool.admit(seq.request_id, seq.max_total_tokens)
            rows.append(executor.prefill(seq, 0, len(ids)).astype(np.float32))
        return np.stack(rows)

    def result(self, engine_dir: Path) -> dict:
        a, manifest = self.args, self.engine.manifest
        engine_s = statistics.median(s[1] for s in self.samples)
        loop_s = statistics.median(s[2] for s in self.samples)
        return {"decode_tok_s": a.batch * a.decode_steps / loop_s,
                "ms_per_step": loop_s / a.decode_steps * 1e3,
                "engine_ms_per_step": engine_s / a.decode_steps * 1e3,
                "prefill_s": statistics.median(s[0] for s in self.samples),
                "samples": self.samples,
                "weight_bytes": manifest["model"]["weight_bytes"],
                "verification": manifest["verification"],  # the engine vs the torch model, at build
                "ops": op_counts(engine_dir / manifest["model"]["file"])}


def agreement(timers: dict[str, DecodeTimer], args: argparse.Namespace) -> dict[str, dict]:
    """How close the variants' logits are to each other on the same prompts (every pair):
    max |diff| relative to the largest logit, and greedy-token agreement."""
    vocab = next(iter(timers.values())).vocab
    prompts = np.random.default_rng(1).integers(0, vocab, (args.batch, args.prompt_tokens))
    logits = {v: t.last_logits(prompts) for v, t in timers.items()}
    names = list(logits)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diff = np.abs(logits[a] - logits[b]).max() / np.abs(logits[b]).max()
            top1 = (logits[a].argmax(-1) == logits[b].argmax(-1)).mean()
            out[f"{a} vs {b}"] = {"max_rel_diff": float(diff), "top1_agreement": float(top1)}
    return out


def op_counts(model_path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


# --- the decode step's linears alone ------------------------------------------------------

def linear_shapes(config: str) -> dict[str, tuple[int, int]]:
    """(K, N) of the engine's linears after packing: qkv, o, gate_up, down (lm_head stays fp16)."""
    from optimizer.models.presets import PRESETS

    c = PRESETS[config]
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    h, i = c["hidden_size"], c["intermediate_size"]
    qkv = (c["num_attention_heads"] + 2 * c["num_key_value_heads"]) * head_dim
    return {"qkv": (h, qkv), "o": (c["num_attention_heads"] * head_dim, h), "gate_up": (h, 2 * i), "down": (i, h)}


def linear_model(form: str, k: int, n: int, rng: np.random.Generator):
    """One linear y = x @ W^T as an ONNX model, fp16 activations: `fp16` (MatMul), `qdq`
    (Q/DQ of x, per-channel DQ of fp8 W, MatMul) or `fp8-cuda` (MatMulBlockQuantizedFp8Weight)."""
    import ml_dtypes
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
    scales = np.abs(w).max(1) / 448.0
    codes = (w / scales[:, None]).astype(ml_dtypes.float8_e4m3fn)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["m", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["m", n])
    init, nodes = [], []

    def const(name: str, array: np.ndarray) -> str:
        init.append(numpy_helper.from_array(array, name))
        return name

    if form == "fp16":
        nodes.append(helper.make_node("MatMul", ["x", const("w", w.T.astype(np.float16))], ["y"]))
    elif form == "qdq":
        s, z = const("s", np.asarray(0.01, np.float16)), const("z", np.asarray(0, ml_dtypes.float8_e4m3fn))
        nodes += [helper.make_node("QuantizeLinear", ["x", s, z], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", s], ["xd"]),
                  helper.make_node("DequantizeLinear", [const("wq", np.ascontiguousarray(codes.T)),
                                                        const("ws", scales.astype(np.float16))], ["wd"], axis=1),
                  helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    else:
        nodes.append(helper.make_node("MatMulBlockQuantizedFp8Weight",
                                      ["x", const("wq", codes), const("ws", scales.astype(np.float32)[:, None]),
                                       const("a", np.asarray(0.01, np.float32))], ["y"],
                                      domain="com.microsoft", block_size=k))
    graph = helper.make_graph(nodes, form, [x], [y], init)
    return onnx.helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21),
                                                                       helper.make_opsetid("com.microsoft", 1)])


def time_linears(config: str, batch: int, provider: str, repeats: int = 200) -> list[dict]:
    """Microseconds per call of each linear of one decode step (M = batch), each form, through
    onnxruntime with the input and output bound on the device."""
    import onnxruntime as ort

    from runtime.session import PROVIDERS, disabled_optimizers

    device = "cuda" if provider == "cuda" else "cpu"
    if device == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    rng = np.random.default_rng(0)
    rows = []
    for name, (k, n) in linear_shapes(config).items():
        row = {"shape": f"{name} {batch}x{k} @ {k}x{n}", "us": {}}
        x = ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((batch, k)).astype(np.float16), device, 0)
        for form in ("fp16", "qdq", "fp8-cuda"):
            try:
                session = ort.InferenceSession(linear_model(form, k, n, rng).SerializeToString(),
                                               providers=[PROVIDERS[provider]],  # the FP8 Q/DQ workaround
                                               disabled_optimizers=list(disabled_optimizers({"method": "fp8"})))
            except Exception as exc:  # e.g. the FP8 kernel missing from this onnxruntime build
                row["us"][form] = float("nan")
                row.setdefault("errors", {})[form] = str(exc)[-300:]
                continue
            binding = session.io_binding()
            binding.bind_ortvalue_input("x", x)
            binding.bind_output("y", device)
            for _ in range(20):
                session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            start = time.perf_counter()
            for _ in range(repeats):
                session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            row["us"][form] = (time.perf_counter() - start) / repeats * 1e6
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="where the engines are built (reused if complete)")
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder (calibration text needs one)")
    parser.add_argument("--config", default="llama-3.2-1b", help="random-weight preset")
    parser.add_argument("--variants", default="fp16,fp8,fp8-cuda")
    parser.add_argument("--calib", default="c4:16x256")
    parser.add_argument("--observer", default="minmax")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-steps", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--provider", default="cuda")
    parser.add_argument("--kernels", action="store_true", help="also time the decode step's linears alone")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")

    if args.provider == "cuda":
        import torch  # first: its CUDA libraries are the ones onnxruntime-gpu loads
    import onnxruntime as ort
    results: dict = {"config": args.config, "batch": args.batch, "prompt_tokens": args.prompt_tokens,
                     "decode_steps": args.decode_steps, "runs": args.runs, "provider": args.provider,
                     "onnxruntime": ort.__version__, "machine": platform.node(), "variants": {}}
    if args.provider == "cuda":
        results["gpu"] = torch.cuda.get_device_name(0)
    work = Path(args.work)
    paths = {}
    for variant in variants:
        print(f"[{variant}] engine ...", flush=True)
        paths[variant] = build(variant, work / variant, args)
    timers = {v: DecodeTimer(paths[v], args) for v in variants}
    for timer in timers.values():
        timer(record=False)  # warm-up: kernels chosen, memory arenas grown
    for r in range(args.runs):  # round robin: drift on the machine touches every variant alike
        print(f"run {r + 1}/{args.runs}: " + ", ".join(variants), flush=True)
        for timer in timers.values():
            timer()
    for variant, timer in timers.items():
        results["variants"][variant] = timer.result(paths[variant])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    results["agreement"] = agreement(timers, args)
    if args.json:  # before the kernels: a run cut short keeps what it measured
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.kernels:
        results["kernels"] = time_linears(args.config, args.batch, args.provider)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def print_table(results: dict) -> None:
    base = results["variants"].get("fp16")
    print(f"\n{results['config']}, batch {results['batch']}, {results['prompt_tokens']}-token prompts, "
          f"{results['decode_steps']} decode steps, {results['provider']} ({results.get('gpu', 'cpu')}), "
          f"onnxruntime {results['onnxruntime']}, median of {results['runs']}")
    print(f"{'variant':10} {'decode tok/s':>13} {'ms/step':>9} {'engine ms/step':>15} {'vs fp16':>8} "
          f"{'weights GiB':>12} {'top-1 vs torch':>15}")
    for name, r in results["variants"].items():
        ratio = f"{r['decode_tok_s'] / base['decode_tok_s']:.2f}x" if base else "-"
        print(f"{name:10} {r['decode_tok_s']:13.0f} {r['ms_per_step']:9.2f} {r['engine_ms_per_step']:15.2f} "
              f"{ratio:>8} {r['weight_bytes'] / 2**30:12.2f} {r['verification']['top1_agreement']:15.0%}")
    for pair, a in results.get("agreement", {}).items():
        print(f"  {pair}: max |logit diff| {a['max_rel_diff']:.3f} of the largest logit, "
              f"greedy tokens agree {a['top1_agreement']:.0%}")
    for row in results.get("kernels", []):
        print(f"  linear {row['shape']}: " + ", ".join(f"{k} {v:.1f} us" for k, v in row["us"].items()))


if __name__ == "__main__":
    main()
