# Issue 22, FP8 on the GPU (started by run.sh after install.sh; SmolLM2's GGUF staged as .gpu/s1 +
# .gpu/s2, the text asset in .gpu/text): the CUDA tests of the paged layout (the fp8 KV cache
# among them), then SmolLM2-135M through the engine on CUDA, wiki 40x512: fp16 paged, (DISTILL=1)
# FP8 W8A8 weights distilled on the GPU with the fp8 KV cache ("FP8 end to end"), and fp16
# paged with the fp8 KV cache. Results: /tmp/gd/eval.jsonl, one line per engine.
set -x
W=/tmp/gd
if [ "${TESTS:-1}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider tests/test_paged_cuda.py 2>&1 | tail -15
fi
SMOL=$(python3 -m optimizer.cli asset smollm2-135m)
P="--dtype fp16 --kv-layout paged --kv-slots 16"
build() { [ -f $W/$1/manifest.json ] || python3 -m optimizer.cli --log-format plain model "$SMOL" $P "${@:2}" \
    --out $W/$1 2>&1 | grep -E "error|verif|engine written|done in" | tail -3; }
evaluate() { [ -f $W/$1/manifest.json ] && python3 -m optimizer.cli eval $W/$1 --provider cuda --windows 40 --json | \
    python3 -c "import json,sys; r=json.load(sys.stdin); r['engine']='$1'; print(json.dumps(r))" >> $W/eval.jsonl; }
build smol-paged-fp16 && evaluate smol-paged-fp16
if [ "${DISTILL:-1}" = 1 ]; then
  build smol-paged-fp8-e2e --kv-cache-dtype fp8 --quant fp8 --target onnxruntime-cuda \
      --distill-steps "${STEPS:-300}" --distill-device cuda && evaluate smol-paged-fp8-e2e
fi
cat $W/eval.jsonl
build smol-paged-fp8kv --kv-cache-dtype fp8 && evaluate smol-paged-fp8kv
cat $W/eval.jsonl
echo SESSION DONE
