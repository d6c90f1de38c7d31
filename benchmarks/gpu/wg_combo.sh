# exp: wg_ab.sh (probe, config-5 tests, replay A/B), then the 1B fp16 / int4 / int4 with the warpgroup tile for
# split calls from 32 rows (config 5) served at 64 concurrent, in two rounds of alternating order.
PROBE=1 bash benchmarks/gpu/wg_ab.sh
cp /tmp/gd/tests.log /tmp/gd/tests-wg5.log
W=/tmp/gd
D="python3 benchmarks/gpu_decode.py --work $W --shapes llama-3.2-1b --concurrency 64 --results $W/b64.jsonl"
RUNS=("fp16-custom" "int4-custom" "OPTIMIZER_INT4_EXP_WG=${WG:-5,32,1} int4-custom")
for round in 0 1; do
  for i in 0 1 2; do
    [ $round = 0 ] && r=${RUNS[$i]} || r=${RUNS[$((2 - i))]}
    format=${r##* }
    env ${r%$format} $D --formats $format --phases ours
  done
done
echo COMBO DONE
