# The next GPU session's plan (started by run.sh from a snapshot of the tree; SmolLM2 staged as
# .gpu/s1 + .gpu/s2, the text asset in .gpu/text). Session 35 found the paged engines' block size
# of 16 keeps onnxruntime 1.31.1's PagedAttention off its fast kernels (head size 128): flash
# attention reads a paged cache in place only with blocks of a multiple of 128, so every prefill or
# mixed step gathers each sequence's whole context into a dense buffer expanded to all query heads
# (2048/128: 699 out tok/s), and the fp8 cache's decode falls to a scalar kernel instead of XQA
# (which needs pages of 128 tokens; 5,305 vs 12,807 out tok/s at 128/128). So, blocks of 128:
# 1. the CUDA tests of both graph executors (the device sampler's `full` graph, the memory-sized
#    pool's fix), in the background while the 8B shape builds paged fp16 and fp8-KV engines with
#    blocks of 128 and room for 2048 + 128 positions;
# 2. the device sampler's full-vocabulary graph against the candidates' one (512 x 128k rows);
#    which attention kernel each kind of step gets (ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO=1, a
#    few requests);
# 3. 512 requests of 128/128 on both, the fp16 one sampled too (temperature 1.0), transformers
#    compiled at 512 (HF=0 skips);
# 4. 2048/128 and 128/2048 on both;
# 5. (B16=1; off by default, it does not fit in 30 minutes with the rest) a blocks-of-16 engine at 2048/128 with mixed steps split (the default there now) and
#    packed (OPTIMIZER_PAGED_SPLIT=0, as session 35 ran).
set -x
W=/tmp/gd  # wait.sh brings its *.jsonl back
mkdir -p $W
if [ "${TESTS:-1}" = 1 ]; then
  (python3 -m pytest -q -p no:cacheprovider tests/test_paged_cuda.py tests/test_cuda_graph.py > $W/tests.log 2>&1;
   echo "tests rc $?" >> $W/tests.log) &
  TP=$!
fi
python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.1-8b \
    --formats fp16-paged,fp16-paged-fp8kv --phases build --kv-block-size 128 --max-len 2304
[ -n "$TP" ] && wait $TP; tail -25 $W/tests.log
python3 benchmarks/sampler_graphs.py --provider cuda --shapes 64x128256,512x128256 --runs 11 > $W/sampler.jsonl
cat $W/sampler.jsonl
tp() {  # engine isl osl [more throughput.py options]
  python3 benchmarks/throughput.py ours $W/ours-llama-3.1-8b-$1 --requests ${N:-512} --isl $2 --osl $3 --arrivals t0 \
      --prefill-budget 16384 --max-batch 512 --gpu-memory-fraction 0.9 --results $W/throughput.jsonl "${@:4}"
}
for e in fp16-paged fp16-paged-fp8kv; do
  ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO=1 N=4 tp $e 300 4 2>&1 | grep -i "sdpa\|kernel" | sort | uniq -c | head -20
done
tp fp16-paged 128 128
tp fp16-paged-fp8kv 128 128
tp fp16-paged 128 128 --temperature 1.0
if [ "${HF:-1}" = 1 ]; then
  python3 benchmarks/throughput.py hf llama-3.1-8b --requests 512 --isl 128 --osl 128 --batches 512 \
      --results $W/throughput.jsonl
fi
for e in fp16-paged fp16-paged-fp8kv; do
  tp $e 2048 128
  tp $e 128 2048
done
if [ "${B16:-0}" = 1 ]; then  # blocks of 16 again, now that mixed steps split there (session 35: 699 out tok/s)
  python3 benchmarks/gpu_decode.py --work /tmp/gd16 --results $W/results.jsonl --shapes llama-3.1-8b \
      --formats fp16-paged --phases build --max-len 2304
  for split in 1 0; do
    OPTIMIZER_PAGED_SPLIT=$split python3 benchmarks/throughput.py ours /tmp/gd16/ours-llama-3.1-8b-fp16-paged \
        --requests 512 --isl 2048 --osl 128 --arrivals t0 --prefill-budget 16384 --max-batch 512 \
        --gpu-memory-fraction 0.9 --results $W/throughput.jsonl
  done
fi
echo SESSION DONE
