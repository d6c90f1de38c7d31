# Where the serving loop's decode time goes (benchmarks/serving_gaps.py) for the 1B fp16-custom
# and int4-custom engines at 64 concurrent requests, after staging onnxruntime-gpu (.gpu/c1..c5),
# then each engine's captured step at 64 rows (gpu_kernels.py --replay-only) under each setting of
# $VARIANTS (;-separated lists of variables, "-" for none). ~4 min of device time.
# Results: /tmp/gd/gaps.jsonl, /tmp/gd/replay.jsonl.
set -x
W=/tmp/gd
mkdir -p $W
python3 benchmarks/gpu_decode.py --work $W --shapes llama-3.2-1b --concurrency 64 --formats fp16-custom,int4-custom \
    --phases build --results $W/build.jsonl | cut -c1-200
for f in fp16-custom int4-custom; do
  python3 benchmarks/serving_gaps.py $W/ours-llama-3.2-1b-$f --results $W/gaps.jsonl 2>/dev/null | cut -c1-1500
done
IFS=';' read -ra VARIANTS <<< "${VARIANTS:--}"
for v in "${VARIANTS[@]}"; do
  for f in fp16-custom int4-custom; do
    env ${v#-} python3 benchmarks/gpu_kernels.py $W/ours-llama-3.2-1b-$f --batch 64 --replay-only \
        --results $W/replay.jsonl 2>/dev/null | cut -c1-300
  done
done
echo SESSION DONE
