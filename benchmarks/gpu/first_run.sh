# Why an int4 engine's first serving run after its build is slow (run10: the 8B int4 engine's
# TTFT p50 1.38 s on its first run, 0.46 s in later processes): a Llama-3.2-1B int4 engine
# built in the call, then three fresh processes of 64 concurrent 128/128 requests, with the
# size of the CUDA driver's JIT cache (~/.nv/ComputeCache) before and after each.
set -x
W=/tmp/gd
mkdir -p $W
cache() { echo "jit-cache $1: $(du -sk ~/.nv/ComputeCache 2>/dev/null | cut -f1) KiB"; }
cache before-build
python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.2-1b \
    --formats int4 --phases build
cache after-build
for i in 1 2 3; do
  python3 benchmarks/throughput.py ours $W/ours-llama-3.2-1b-int4 --requests 64 --isl 128 --osl 128 \
      --arrivals t0 --max-batch 64 --results $W/throughput.jsonl 2>&1 | grep -v Warn | cut -c1-160
  cache "after-run-$i"
done
grep -h . $W/throughput.jsonl | python3 -c "
import json, sys
for l in sys.stdin:
    r = json.loads(l); print('out_tok_s %.0f ttft_p50 %.3f tpot_p50 %.5f' % (r['output_tok_s'], r['ttft_s_p50'], r['tpot_s_p50']))"
echo SESSION DONE
