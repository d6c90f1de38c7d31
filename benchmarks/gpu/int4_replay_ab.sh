# Kernel choices that read environment switches, A/B on the captured decode step as served: the 1B
# int4-custom engine's step under each of VARIANTS (;-separated settings, "-" for none), and
# fp16-custom's as the reference, interleaved over ROUNDS rounds (benchmarks/gpu_kernels.py
# --replay-only at BATCH rows: the whole step and the model's graph replayed, three times each). One
# build of the two engines, no serving runs, no tests unless TESTS (after staging onnxruntime-gpu, .gpu/c1..c5;
# ~2.5 min to build, then ~15 s a variant a round on an H100):
#   VARIANTS="-;OPTIMIZER_INT4_STEPS=single" ROUNDS=2 bash benchmarks/gpu/run.sh bash benchmarks/gpu/int4_replay_ab.sh
# TESTS="settings" (TESTS=- for the defaults) also runs the LinearInt4 CUDA tests
# (tests/test_custom_ops_int4.py) with those settings while the engines build, into /tmp/gd/tests.log
# (~3 min on an H100).
# SHAPE=llama-3.1-8b: the 8B shape's engines instead of the 1B's (the default).
# Results: /tmp/gd/replay.jsonl (each record's `env` names its variant).
set -x
W=/tmp/gd
SHAPE=${SHAPE:-llama-3.2-1b}
mkdir -p $W
[ -z "$TESTS" ] || bash benchmarks/gpu/int4_tests.sh ${TESTS#-} &
python3 benchmarks/gpu_decode.py --work $W --shapes $SHAPE --formats fp16-custom,int4-custom --phases build \
    --results $W/build.jsonl
wait  # the tests: nothing else on the GPU while the steps are timed
IFS=';' read -ra VARIANTS <<< "${VARIANTS:--}"
replay() {  # format, then the variant's settings
  env "${@:2}" python3 benchmarks/gpu_kernels.py $W/ours-$SHAPE-$1 --batch "${BATCH:-16,64}" --replay-only \
      --results $W/replay.jsonl | sed "s|^|${*:2} |" | cut -c1-300
}
for round in $(seq 1 "${ROUNDS:-2}"); do
  replay fp16-custom
  for v in "${VARIANTS[@]}"; do
    [ "$v" = - ] && replay int4-custom || replay int4-custom $v
  done
done
echo SESSION DONE
