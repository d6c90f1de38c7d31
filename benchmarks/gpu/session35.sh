# Issues 20 / 22 / 25 in one GPU session (started by run.sh from a snapshot of the tree; SmolLM2
# staged as .gpu/s1 + .gpu/s2, the text asset in .gpu/text), most needed first:
# 1. the CUDA tests of both graph executors (the paged decode's device sampling,
#    runtime/decode_choice.py, first run on a GPU here), in the background while
# 2. the Llama-3.1-8B shape builds paged fp16 and paged with the fp8 KV cache;
# 3. 512 requests of 128/128 on both (pools from 90% of the GPU), the fp16 one sampled too
#    (temperature 1.0, as vLLM's throughput benchmark), transformers compiled at 512 (HF=0 skips);
# 4. (issue 25) SmolLM2 on CUDA at batch 1: speculation off, prompt lookup, a draft engine;
# 5. 2048/128 and 128/2048 on a paged fp16 engine of maximum length 2304 (LONG=0 skips).
set -x
W=/tmp/gd
mkdir -p $W
if [ "${TESTS:-1}" = 1 ]; then
  (python3 -m pytest -q -p no:cacheprovider tests/test_paged_cuda.py tests/test_cuda_graph.py > $W/tests.log 2>&1;
   echo "tests rc $?" >> $W/tests.log) &
  TP=$!
fi
python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.1-8b \
    --formats fp16-paged,fp16-paged-fp8kv --phases build
[ -n "$TP" ] && wait $TP; tail -25 $W/tests.log
tp() {  # engine isl osl [more throughput.py options]
  python3 benchmarks/throughput.py ours $W/ours-llama-3.1-8b-$1 --requests 512 --isl $2 --osl $3 --arrivals t0 \
      --prefill-budget 16384 --max-batch 512 --gpu-memory-fraction 0.9 --results $W/throughput.jsonl "${@:4}"
}
tp fp16-paged 128 128
tp fp16-paged-fp8kv 128 128
tp fp16-paged 128 128 --temperature 1.0
if [ "${HF:-1}" = 1 ]; then
  python3 benchmarks/throughput.py hf llama-3.1-8b --requests 512 --isl 128 --osl 128 --batches 512 \
      --results $W/throughput.jsonl
fi
if [ "${SPEC:-1}" = 1 ]; then
  SMOL=$(python3 -m optimizer.cli asset smollm2-135m)
  for f in fp16 int4; do
    q=$([ $f = int4 ] && echo "--quant int4")
    [ -f $W/smol-$f/manifest.json ] || python3 -m optimizer.cli --log-format plain model "$SMOL" --dtype fp16 $q \
        --kv-slots 1 --kv-capacity 1280 --out $W/smol-$f 2>&1 | grep -E "error|engine written" | tail -2
  done
  python3 benchmarks/speculative.py --engine $W/smol-fp16 --draft $W/smol-int4 --provider cuda --rounds 3 \
      --ks 8/3,4/3 --draft-k 4 --out $W/spec 2>&1 | tail -20
  cp $W/spec/results.json $W/spec.jsonl 2>/dev/null
fi
if [ "${LONG:-1}" = 1 ]; then  # an engine long enough for 2048 + 128 positions (a work dir of its own)
  python3 benchmarks/gpu_decode.py --work /tmp/gd2 --results $W/results.jsonl --shapes llama-3.1-8b \
      --formats fp16-paged --phases build --max-len 2304
  for io in "2048 128" "128 2048"; do
    set -- $io
    python3 benchmarks/throughput.py ours /tmp/gd2/ours-llama-3.1-8b-fp16-paged --requests 512 --isl $1 --osl $2 \
        --arrivals t0 --prefill-budget 16384 --max-batch 512 --gpu-memory-fraction 0.9 --results $W/throughput.jsonl
  done
fi
echo SESSION DONE
