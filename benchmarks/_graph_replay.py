"""Timing an onnxruntime CUDA session by replaying one captured CUDA graph (IO binding, inputs
and outputs in device buffers): what the device microbenchmarks share."""

from __future__ import annotations

import statistics
import time


def replay_us(sess, inputs: dict, outputs: dict, graph_id: int, runs: int, per_round: int = 10) -> float:
    """Median microseconds a replay over `runs` timed rounds of `per_round` replays, after the
    runs that capture the graph. `inputs` / `outputs`: name -> OrtValue on the device; the
    session was made with enable_cuda_graph; `graph_id` tells its captured graphs apart."""
    import onnxruntime as ort

    binding = sess.io_binding()
    for name, value in inputs.items():
        binding.bind_ortvalue_input(name, value)
    for name, value in outputs.items():
        binding.bind_ortvalue_output(name, value)
    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", str(graph_id))
    for _ in range(3):  # the first runs capture the graph
        sess.run_with_iobinding(binding, options)
    times = []
    for _ in range(runs):
        binding.synchronize_inputs()
        t = time.perf_counter()
        for _ in range(per_round):
            sess.run_with_iobinding(binding, options)
        binding.synchronize_outputs()
        times.append((time.perf_counter() - t) / per_round * 1e6)
    return statistics.median(times)
