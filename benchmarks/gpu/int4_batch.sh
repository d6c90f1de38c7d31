# Issue 20's open target, int4 never slower than fp16 at batch 64, through the custom-ops engines
# (after staging onnxruntime-gpu, .gpu/c1..c5; ~6 min of device time, ~8 with the probe):
# 1. the LinearInt4 CUDA tests (tests/test_custom_ops_int4.py: the GEMV at 1-4 rows, the
#    tensor-core GEMM of runtime/custom_ops/gemm_int4_mma.cuh above (the default), and in a child
#    pytest with OPTIMIZER_INT4_GEMM=dequantize the bands: eager and captured, against the CPU kernel);
# 2. benchmarks/gpu/int4_probe.sh (the GEMM alone against cuBLAS fp16, and under Nsight Compute;
#    SKIP_PROBE=1 leaves it out, where it ran alone before);
# 3. the 1B fp16-custom and int4-custom engines (static, 64 slots) built, then at batch 1 and 64
#    concurrent 128 in / 128 out: fp16-custom and int4-custom, in one order and the other, twice
#    (one call; run17 had the bands, OPTIMIZER_INT4_GEMM=dequantize, 1.2x slower than the GEMM).
# Results: /tmp/gd/b64.jsonl, probe.jsonl, tests.log in the log.
set -x
W=/tmp/gd
mkdir -p $W
python3 -m pytest -q -p no:cacheprovider tests/test_custom_ops_int4.py > $W/tests.log 2>&1
echo "tests rc $?" >> $W/tests.log
grep -E "passed|failed|rc |Error" $W/tests.log | tail -8
[ -n "$SKIP_PROBE" ] || bash benchmarks/gpu/int4_probe.sh
D="python3 benchmarks/gpu_decode.py --work $W --shapes llama-3.2-1b --concurrency 64 --results $W/b64.jsonl"
$D --formats fp16-custom,int4-custom --phases build
for order in fp16-custom,int4-custom int4-custom,fp16-custom fp16-custom,int4-custom int4-custom,fp16-custom; do
  $D --formats $order --phases ours
done
echo SESSION DONE
