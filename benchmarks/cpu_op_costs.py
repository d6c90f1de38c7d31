"""Single-op costs on onnxruntime's CPU provider at SmolLM2-135M's batch-1 decode shapes: each
op alone in a session, IO-bound once, run in a loop (its weights stay in cache between runs,
which a whole decode step's ~90 MB do not; read the numbers as each kernel's floor).

    python benchmarks/cpu_op_costs.py [--threads 2] [--rounds 5]

MatMulNBits: one row of activations (accuracy level 4: int8), every linear's (K, N) and the
weight formats in FORMATS (bits, block size, zero points). ArgMax over the vocabulary (the
greedy-tokens output) against numpy's argmax of the same logits. com.microsoft SwiGLU: whether
this onnxruntime has a CPU kernel for it (1.32.0 has the schema only). Prints median
microseconds per run over --rounds rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHAPES = {"qkv": (576, 960), "o_proj": (576, 576), "gate_up": (576, 3072), "down": (1536, 576),
          "lm_head": (576, 49152)}
FORMATS = [(4, 64, True), (4, 64, False), (4, 128, True), (4, 32, False), (8, 64, True), (8, 64, False),
           (8, 128, True)]  # (bits, block size, zero points)
OPSETS = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]


def one_node_model(node, inputs, outputs, initializers=()) -> bytes:
    graph = helper.make_graph([node], "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=OPSETS)
    model.ir_version = 10
    return model.SerializeToString()


def matmul_nbits(k: int, n: int, bits: int, block: int, zero_points: bool) -> bytes:
    rng = np.random.default_rng(0)
    blocks = -(-k // block)
    inits = [numpy_helper.from_array(rng.integers(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8), "B"),
             numpy_helper.from_array(rng.random(n * blocks, dtype=np.float32) * 0.01, "S")]
    if zero_points:
        inits.append(numpy_helper.from_array(rng.integers(0, 256, n * -(-blocks * bits // 8), dtype=np.uint8), "Z"))
    node = helper.make_node("MatMulNBits", ["x", "B", "S", "Z"][:len(inits) + 1], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=bits, block_size=block, accuracy_level=4)
    return one_node_model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


def argmax(vocab: int) -> bytes:
    node = helper.make_node("ArgMax", ["x"], ["y"], axis=-1, keepdims=0)
    return one_node_model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, vocab])],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, None)])


def us_per_run(model: bytes, x: np.ndarray, threads: int, rounds: int, target_s: float = 0.05) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_output("y")
    start = time.perf_counter()
    for _ in range(10):  # warm-up, and the loop length that takes ~target_s
        session.run_with_iobinding(binding)
    reps = max(10, int(target_s / ((time.perf_counter() - start) / 10)))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            session.run_with_iobinding(binding)
        times.append((time.perf_counter() - start) / reps * 1e6)
    return statistics.median(times)


def swiglu_kernel() -> str:
    node = helper.make_node("SwiGLU", ["x"], ["y"], domain="com.microsoft", activation_alpha=1.0)
    model = one_node_model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    try:
        ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's NOT_IMPLEMENTED
        return f"no ({str(e).splitlines()[0][:120]})"
    return "yes"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"onnxruntime {ort.__version__}, {args.threads} threads; com.microsoft SwiGLU CPU kernel: {swiglu_kernel()}")
    print("| linear | K x N | " + " | ".join(f"int{b} g{g} {'asym' if z else 'sym'}" for b, g, z in FORMATS) + " |")
    print("|---|---|" + "---|" * len(FORMATS))
    for name, (k, n) in SHAPES.items():
        x = np.random.default_rng(1).standard_normal((1, 1, k)).astype(np.float32)
        cells = [f"{us_per_run(matmul_nbits(k, n, *fmt), x, args.threads, args.rounds):.1f}" for fmt in FORMATS]
        print(f"| {name} | {k} x {n} | " + " | ".join(cells) + " |", flush=True)
    logits = np.random.default_rng(2).standard_normal((1, 1, 49152)).astype(np.float32)
    start = time.perf_counter()
    for _ in range(2000):
        np.argmax(logits[0, -1])
    print(f"ArgMax over 49152 logits: onnxruntime {us_per_run(argmax(49152), logits, args.threads, args.rounds):.1f} us, "
          f"numpy {(time.perf_counter() - start) / 2000 * 1e6:.1f} us")


if __name__ == "__main__":
    main()
