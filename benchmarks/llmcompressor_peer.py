"""llm-compressor as the peer in benchmarks/quant_quality.py; runs in llm-compressor's own venv.

    <llmc-venv>/bin/python benchmarks/llmcompressor_peer.py --model <hf-folder> \\
        --calib-windows calib.npy --eval-windows eval.npy --algo gptq|awq|fp8 [--asym]

Same calibration windows, lm_head kept. gptq / awq: int4 group 64, GPTQ with static
act-order, AWQ with n_grid 10 (as in the project's reference figures). fp8: W8A8 E4M3 as ours
(per-channel weights, one static per-tensor activation scale from calibration: min-max),
through QuantizationModifier. Prints one JSON line: the fake-quant torch
model's perplexity on the evaluation windows (the same NLL code as ours), the wall time of
`oneshot`, and the process's peak RSS.

Set-up (never a dependency of the project):
    python3 -m venv llmc && llmc/bin/pip install torch==2.13.0 \\
        && llmc/bin/pip install llmcompressor==0.14.0.1 "transformers<=5.17" rich
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--calib-windows", required=True)
    p.add_argument("--eval-windows", required=True)
    p.add_argument("--algo", choices=["gptq", "awq", "fp8"], required=True)
    p.add_argument("--asym", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--awq-grid", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    # llm-compressor's AWQ pins its activation cache, which needs an accelerator; on a CPU-only
    # machine pinning is meaningless, so make it a no-op (changes nothing else).
    torch.Tensor.pin_memory = lambda self, *a, **k: self

    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from transformers import AutoModelForCausalLM

    from optimizer.evaluate import perplexity, torch_logits_fn

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    calib = np.load(args.calib_windows)
    ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": np.ones_like(calib).tolist()})
    weights = dict(num_bits=4, type="int", symmetric=not args.asym, strategy="group", group_size=64)
    if args.algo == "fp8":
        fp8 = dict(num_bits=8, type="float", symmetric=True)
        scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**fp8, strategy="channel"),
                                    input_activations=QuantizationArgs(**fp8, strategy="tensor", dynamic=False))
        recipe = [QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])]
    elif args.algo == "gptq":
        scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**weights, actorder="static"))
        recipe = [GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"], block_size=128,
                               dampening_frac=0.01)]
    else:
        scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**weights))
        recipe = [AWQModifier(n_grid=args.awq_grid, duo_scaling=True),
                  QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])]
    start = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(calib),
            max_seq_length=calib.shape[1], shuffle_calibration_samples=False, pipeline="sequential")
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ppl = perplexity(torch_logits_fn(model), np.load(args.eval_windows))["perplexity"]
    print(json.dumps({"ppl_torch": ppl, "quant_seconds": round(seconds, 1), "peak_rss_mb": round(rss)}))


if __name__ == "__main__":
    main()
