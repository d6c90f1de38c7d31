# Issue 20's open target, int4 never slower than fp16 at batch 64, through the custom-ops engines
# (after staging onnxruntime-gpu, .gpu/c1..c5; ~7 min of device time):
# 1. the LinearInt4 CUDA tests (tests/test_custom_ops_int4.py: the GEMV at 1-4 rows, the
#    tensor-core GEMM of runtime/custom_ops/gemm_int4_mma.cuh above, eager and captured, against
#    the CPU kernel; the banded path OPTIMIZER_INT4_GEMM=dequantize picks);
# 2. the 1B fp16-custom and int4-custom engines (static, 64 slots) built, then at batch 1 and 64
#    concurrent 128 in / 128 out: fp16-custom, int4-custom, int4-custom with
#    OPTIMIZER_INT4_GEMM=dequantize (LinearInt4's path above 4 rows before this session: the
#    weights dequantized band by band for cuBLAS), then int4-custom and fp16-custom again (one call).
# Results: /tmp/gd/b64.jsonl (each line's `env` says which path), /tmp/gd/tests.log.
set -x
W=/tmp/gd
mkdir -p $W
python3 -m pytest -q -p no:cacheprovider tests/test_custom_ops_int4.py > $W/tests.log 2>&1
echo "tests rc $?" >> $W/tests.log
grep -E "passed|failed|rc |Error" $W/tests.log | tail -5
D="python3 benchmarks/gpu_decode.py --work $W --shapes llama-3.2-1b --concurrency 64 --results $W/b64.jsonl"
$D --formats fp16-custom,int4-custom --phases build
$D --formats fp16-custom,int4-custom --phases ours
OPTIMIZER_INT4_GEMM=dequantize $D --formats int4-custom --phases ours
$D --formats int4-custom,fp16-custom --phases ours
echo SESSION DONE
