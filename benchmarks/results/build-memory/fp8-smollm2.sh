#!/usr/bin/env bash
# SmolLM2-135M (a safetensors folder) -> FP8 engine in memory and with --stream: peak RSS and wall
# time of each build, the engine files' digests, wiki 40x512 perplexity through each engine.
#   bash benchmarks/results/build-memory/fp8-smollm2.sh [SMOLLM2_HF_FOLDER] [WORK_DIR]
# (default folder: the tests' conversion of the packaged GGUF, ~/.cache/optimizer/test/smollm2-135m-hf)
set -euo pipefail
cd "$(dirname "$0")/../../.."
SRC=${1:-$HOME/.cache/optimizer/test/smollm2-135m-hf}
WORK=${2:-/tmp/fp8-smollm2}
PY=${PYTHON:-python}
mkdir -p "$WORK"
for flags in "" "--stream"; do
  out=$WORK/smol-fp8${flags:+-stream}
  rm -rf "$out"
  /usr/bin/time -f "build $flags: %e s wall, %M KB peak RSS" $PY -m optimizer.cli model "$SRC" --quant fp8 $flags \
    --out "$out" -q
done
sha256sum "$WORK"/smol-fp8/model.onnx* "$WORK"/smol-fp8-stream/model.onnx*
for e in smol-fp8 smol-fp8-stream; do
  $PY -m optimizer.cli eval "$WORK/$e" --dataset wiki --windows 40 --seq-len 512 --json | tee "$WORK/$e.eval.json"
done
