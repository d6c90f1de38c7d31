"""Perplexity of an onnxruntime-genai model-builder engine, on the windows `optimize eval` uses.

    python benchmarks/genai_ppl.py /path/to/genai-int4/ --dataset wiki --windows 40 --seq-len 512 --threads 2

The builder's model.onnx runs through onnxruntime (the same package our engines use; no
onnxruntime-genai needed): each window is one prefill from an empty cache, and its logits
are scored like ours (optimizer.evaluate). The names and cache shape come from the folder's
genai_config.json; the windows from its tokenizer (BOS as `optimize eval` adds it for
architectures that need one: pass --bos for those).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from calibration.data import TextSpec, token_windows, windows_hash
from optimizer.evaluate import perplexity


def logits_fn(folder: Path, threads: int):
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(folder / decoder["filename"]), opts, providers=["CPUExecutionProvider"])
    names = decoder["inputs"]
    empty = np.zeros((1, decoder["num_key_value_heads"], 0, decoder["head_size"]), np.float32)
    past = {}
    for i in range(decoder["num_hidden_layers"]):
        past[names["past_key_names"] % i] = empty
        past[names["past_value_names"] % i] = empty

    def run(ids: np.ndarray) -> np.ndarray:
        feeds = {names["input_ids"]: ids, names["attention_mask"]: np.ones_like(ids), **past}
        return session.run([decoder["outputs"]["logits"]], feeds)[0]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--dataset", default="wiki")
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bos", type=int, default=None, help="BOS id to put first in each window")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.folder)
    windows = token_windows(tokenizer, TextSpec(args.dataset, args.windows, args.seq_len), args.bos)
    result = perplexity(logits_fn(args.folder, args.threads), windows)
    print(json.dumps({"target": str(args.folder), "evaluated_with": "onnxruntime-genai engine (its model.onnx)",
                      "dataset": args.dataset, "windows": args.windows, "seq_len": args.seq_len,
                      "windows_sha256": windows_hash(windows), **result}, indent=2))


if __name__ == "__main__":
    main()
