# Issue 20's open target, int4 never slower than fp16 at batch 64, through the custom-ops engines
# (after staging onnxruntime-gpu, .gpu/c1..c5; ~6 min of device time, ~8 with the probe):
# 1. the LinearInt4 CUDA tests (tests/test_custom_ops_int4.py: the GEMV at 1-4 rows, the
#    tensor-core GEMM of runtime/custom_ops/gemm_int4_mma.cuh above (the default), and in child
#    pytests its other ways of adding K's parts and with OPTIMIZER_INT4_GEMM=dequantize the bands:
#    eager and captured, against the CPU kernel), while the engines of 3. are built;
# 2. benchmarks/gpu/int4_probe.sh (the GEMM alone against cuBLAS fp16, and under Nsight Compute;
#    SKIP_PROBE=1 leaves it out, where it ran alone before);
# 3. the 1B fp16-custom and int4-custom engines (static, 64 slots) built (while the tests run), then
#    at batch 1 and 64 concurrent 128 in / 128 out, one after another, then again in the reverse
#    order: fp16-custom; int4-custom as it is (o with the norm and gate/up after it, down with the
#    next q/k/v: one op each, the norm's kernel adding the first GEMM's K parts; programmatic
#    dependent launches); int4-custom-nochain (each 4-bit linear an op, K's parts added by a
#    conversion kernel of its own);
# 4. where each engine's step at batch 64 spends its GPU time (benchmarks/gpu_kernels.py, plain
#    launches: OPTIMIZER_CUDA_PDL=0, each kernel's own time; its first 40 kernels in order);
# 5. each run's captured step at batch 16 and 64 as served (gpu_kernels.py --replay-only, programmatic
#    launches as the run has them): the whole step and the model's graph alone, into replay.jsonl.
# RUNS="fp16-custom;int4-custom;OPTIMIZER_INT4_SPLIT=atomics int4-custom" (;-separated, any variables
# before a format) times those runs instead of the three of 3., and their kernels as 4. (into
# kernels-N.jsonl for run N with variables); SKIP_KERNELS=1 leaves 4. out; CONC=16,64: more concurrencies in 3.
# SHAPE=llama-3.1-8b: the 8B shape's engines instead of the 1B's (with RUNS="fp16-custom;int4-custom"
# CONC=16,64 SKIP_PROBE=1 SKIP_KERNELS=1: 9.0-9.6 min of one call on an H100, run66-67).
# Results: /tmp/gd/b64.jsonl, kernels*.jsonl, replay.jsonl, probe.jsonl, tests.log in the log.
set -x
W=/tmp/gd
mkdir -p $W
bash benchmarks/gpu/int4_tests.sh &
SHAPE=${SHAPE:-llama-3.2-1b}
D="python3 benchmarks/gpu_decode.py --work $W --shapes $SHAPE --concurrency ${CONC:-64} --results $W/b64.jsonl"
IFS=';' read -ra RUNS <<< "${RUNS:-fp16-custom;int4-custom;int4-custom-nochain}"
$D --formats "$(for r in "${RUNS[@]}"; do echo "${r##* }"; done | sort -u | paste -sd,)" --phases build
wait  # the tests: nothing else on the GPU while the engines are timed
grep -E "passed|failed|rc |Error" $W/tests.log | tail -8
[ -n "$SKIP_PROBE" ] || bash benchmarks/gpu/int4_probe.sh
for round in $(seq 0 $(( ${ROUNDS:-2} - 1 ))); do  # ROUNDS=1: one order only
  for i in "${!RUNS[@]}"; do
    [ $round = 0 ] && r=${RUNS[$i]} || r=${RUNS[$((${#RUNS[@]} - 1 - i))]}
    format=${r##* }
    env ${r%$format} $D --formats $format --phases ours  # the variables before the format, if any
  done
done
# run i's kernels (with its variables) into kernels.jsonl, or kernels-i.jsonl
for i in $([ -n "$SKIP_KERNELS" ] || echo "${!RUNS[@]}"); do
  r=${RUNS[$i]}; format=${r##* }; variables=${r%$format}
  [ -z "$variables" ] && out=$W/kernels.jsonl || out=$W/kernels-$i.jsonl
  env $variables OPTIMIZER_CUDA_PDL=0 python3 benchmarks/gpu_kernels.py $W/ours-$SHAPE-$format --batch 64 \
      --results $out | cut -c1-300
done
for r in "${RUNS[@]}"; do  # each run's captured steps as served (programmatic launches as configured)
  format=${r##* }
  env ${r%$format} python3 benchmarks/gpu_kernels.py $W/ours-$SHAPE-$format --batch 16,64 --replay-only \
      --results $W/replay.jsonl | sed "s|^|${r%$format}|" | cut -c1-300
done
echo SESSION DONE
