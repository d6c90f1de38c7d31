# Issue 20's open target, int4 never slower than fp16 at batch 64, through the custom-ops engines
# (after staging onnxruntime-gpu, .gpu/c1..c5; ~10-12 min of device time):
# 1. the LinearInt4 CUDA tests (tests/test_custom_ops_int4.py: the GEMV at 1-4 rows, the banded
#    path above (the default), and in a child pytest with OPTIMIZER_INT4_GEMM=mma the tensor-core
#    GEMM of runtime/custom_ops/gemm_int4_mma.cuh: eager and captured, against the CPU kernel);
# 2. the int4 GEMM probe against cuBLAS fp16 and the bands, 8-128 rows at the 1B shape, 16 and 64 at
#    8B (benchmarks/gpu_int4_gemm_probe.py: 128 and 256 outputs a block, blocks of up to 64, 32 and
#    16 rows, split K by atomics instead of in a thread block cluster); then at 64 rows with twice
#    the blocks (--fill 264); then one 64-row call of the GEMM (1B q/k/v, split K; 1B gate/up, not
#    split) under Nsight Compute with its SASS and the warp stall samples of each instruction: where
#    run16's latency (long scoreboard) stalls come from;
# 3. the 1B fp16-custom and int4-custom engines (static, 64 slots) built, then at batch 1 and 64
#    concurrent 128 in / 128 out: fp16-custom, int4-custom (bands for cuBLAS above 4 rows),
#    int4-custom with OPTIMIZER_INT4_GEMM=mma, then the three again in reverse order (one call).
# If the tests pass and mma is the faster, set linear_int4.cu's kDefaultGemm = "mma".
# Results: /tmp/gd/b64.jsonl (each line's `env` says which path), probe.jsonl, tests.log in the log.
set -x
W=/tmp/gd
mkdir -p $W
python3 -m pytest -q -p no:cacheprovider tests/test_custom_ops_int4.py > $W/tests.log 2>&1
echo "tests rc $?" >> $W/tests.log
grep -E "passed|failed|rc |Error" $W/tests.log | tail -8
(cd benchmarks && python3 gpu_int4_gemm_probe.py --shapes 1b --rows 8,16,32,64,128 --configs 0,1,100,101,200,1000 \
     --results $W/probe.jsonl > /dev/null
 python3 gpu_int4_gemm_probe.py --shapes 8b --rows 16,64 --configs 0,1,100 --results $W/probe.jsonl > /dev/null
 python3 gpu_int4_gemm_probe.py --shapes 1b --rows 64 --configs 0,1,100 --forms "" --fill 264 \
     --results $W/probe.jsonl > /dev/null
 for linear in qkv gate_up; do
   timeout 240 ncu -f -o $W/mma-$linear --set full -k regex:gemm_int4_mma_kernel -s 8 -c 1 python3 gpu_int4_gemm_probe.py \
       --shapes 1b --linears $linear --rows 64 --configs 0 --forms "" --runs 1 > /dev/null 2>&1
   ncu --import $W/mma-$linear.ncu-rep --page source --csv --print-source sass > $W/mma-$linear-sass.csv 2> $W/mma-sass.err
   ncu --import $W/mma-$linear.ncu-rep --page details --csv > $W/mma-$linear-details.csv 2>> $W/mma-sass.err
   python3 - $W/mma-$linear-sass.csv <<'PY'
import csv, sys  # the 30 SASS instructions with the most warp stall samples
rows = list(csv.DictReader(open(sys.argv[1])))
key = next((k for k in (rows[0] if rows else {}) if k.startswith("Warp Stall Sampling (All")), None)
if key is None:
    print("no stall samples in", sys.argv[1], list(rows[0])[:12] if rows else "(empty)")
else:
    num = lambda r: float((r[key] or "0").replace(",", ""))
    print(sys.argv[1], "stall samples", sum(map(num, rows)))
    for r in sorted(rows, key=num, reverse=True)[:30]:
        print(f"{num(r):8.0f}  {r.get('Address', '')}  {r.get('Source', '')}")
PY
 done
)
D="python3 benchmarks/gpu_decode.py --work $W --shapes llama-3.2-1b --concurrency 64 --results $W/b64.jsonl"
$D --formats fp16-custom,int4-custom --phases build
$D --formats fp16-custom,int4-custom --phases ours
OPTIMIZER_INT4_GEMM=mma $D --formats int4-custom --phases ours
OPTIMIZER_INT4_GEMM=mma $D --formats int4-custom --phases ours
$D --formats int4-custom,fp16-custom --phases ours
echo SESSION DONE
