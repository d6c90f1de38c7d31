# Issue 20's open target, int4 never slower than fp16 at batch 64, through the custom-ops engines
# (after staging onnxruntime-gpu, .gpu/c1..c5; ~6 min of device time, ~8 with the probe):
# 1. the LinearInt4 CUDA tests (tests/test_custom_ops_int4.py: the GEMV at 1-4 rows, the
#    tensor-core GEMM of runtime/custom_ops/gemm_int4_mma.cuh above (the default), and in a child
#    pytest with OPTIMIZER_INT4_GEMM=dequantize the bands: eager and captured, against the CPU kernel);
# 2. benchmarks/gpu/int4_probe.sh (the GEMM alone against cuBLAS fp16, and under Nsight Compute;
#    SKIP_PROBE=1 leaves it out, where it ran alone before);
# 3. the 1B fp16-custom and int4-custom engines (static, 64 slots) built, then at batch 1 and 64
#    concurrent 128 in / 128 out, one after another, then again in the reverse order: fp16-custom;
#    int4-custom as it is (K's parts by atomics, programmatic dependent launches); without those
#    launches (OPTIMIZER_CUDA_PDL=0); with K's parts stored and added in order (OPTIMIZER_INT4_SPLIT=parts);
#    added by atomics into sums kept at zero, the tile's last part converting (OPTIMIZER_INT4_SPLIT=last).
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
RUNS=("fp16-custom" "int4-custom" "OPTIMIZER_CUDA_PDL=0 int4-custom" "OPTIMIZER_INT4_SPLIT=parts int4-custom"
      "OPTIMIZER_INT4_SPLIT=last int4-custom")
for round in 0 1; do
  for i in 0 1 2 3 4; do
    [ $round = 0 ] && r=${RUNS[$i]} || r=${RUNS[$((4 - i))]}
    format=${r##* }
    env ${r%$format} $D --formats $format --phases ours  # the variables before the format, if any
  done
done
echo SESSION DONE
