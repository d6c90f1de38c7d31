# exp/wgmma-permuted: A/B on the 1B int4 engine's captured step (after staging onnxruntime-gpu), LinearInt4's
# CUDA tests with config 5 for every GEMM call while the engines build; PROBE=1 first probes the tiles linear by linear.
set -x
mkdir -p /tmp/gd
[ -z "$PROBE" ] || python3 benchmarks/gpu_int4_gemm_probe.py --shapes 1b --rows 16,64 \
    --linears qkv,o,gate_up,down,lm_head --configs 12024,12000,12002,12005,12015 --forms cublas-fp16 --fill 264 \
    --results /tmp/gd/probe.jsonl | cut -c1-200
TESTS="OPTIMIZER_INT4_EXP_WG=5,5,0" VARIANTS="${VARIANTS:--;OPTIMIZER_INT4_EXP_WG=2,32,1;OPTIMIZER_INT4_EXP_WG=5,32,1}" \
    ROUNDS=2 BATCH=64 bash benchmarks/gpu/int4_replay_ab.sh
grep -E "passed|failed|rc " /tmp/gd/tests.log | tail -5
