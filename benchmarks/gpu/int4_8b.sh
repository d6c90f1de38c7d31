# Issue 20's int4-at-64 target at the Llama-3.1-8B shape, through the custom-ops engines (after staging
# onnxruntime-gpu, .gpu/c1..c5; ~9 min of device time on an H100 by estimate, not yet run: loading the
# random 8B model ~2 min, each build ~2 min, then the timings): fp16-custom and int4-custom (static, 64
# slots) built, the model's captured step replayed at 16 and 64 rows (gpu_kernels.py --replay-only, two
# rounds), then served at 16 and 64 concurrent requests of 128 in / 128 out in the order fp16, int4,
# int4, fp16 (one process each). Detached, then polled (wait.sh brings the results back):
#   bash benchmarks/gpu/run.sh bash benchmarks/gpu/int4_8b.sh
# Results: /tmp/gd/build-8b.jsonl, replay-8b.jsonl, served-8b.jsonl (the engines: /tmp/gd/ours-llama-3.1-8b-*).
set -x
W=/tmp/gd
mkdir -p $W
D="python3 benchmarks/gpu_decode.py --work $W --shapes llama-3.1-8b --concurrency 16,64"
$D --formats fp16-custom,int4-custom --phases build --results $W/build-8b.jsonl
for round in 1 2; do
  for f in fp16-custom int4-custom; do
    python3 benchmarks/gpu_kernels.py $W/ours-llama-3.1-8b-$f --batch 16,64 --replay-only \
        --results $W/replay-8b.jsonl | cut -c1-300
  done
done
for f in fp16-custom int4-custom int4-custom fp16-custom; do
  $D --formats $f --phases ours --results $W/served-8b.jsonl
done
echo SESSION DONE
