# CachedAttention's prefill on tensor cores (runtime/custom_ops/attention_mma.cuh) against the CUDA-core
# kernel before it, after staging onnxruntime-gpu (.gpu/c1..c5):
# 1. benchmarks/gpu_attention_probe.py at the 1B and 8B shapes: first prefills of 128, 512 and 2,048
#    tokens at batch 1 and of 128 tokens in 64 rows, each checked against torch, a layer's time
#    (captured), the tensor-core kernel (`now`) and the CUDA-core one (kMmaPrefillTokens=0), torch's
#    SDPA beside them; decode steps at batch 1, 256 positions (unchanged kernels);
# 2. the CachedAttention CUDA tests (tests/test_custom_ops_attention.py: eager and captured, against
#    the op's CPU kernel), into /tmp/gd/attn-tests.log;
# 3. with SERVE=1: the 1B fp16-custom engine built, then 64 concurrent 128 in / 128 out requests
#    with the tensor-core prefill and with OPTIMIZER_ATTN_PREFILL=cores, then in the reverse order.
#   bash benchmarks/gpu/run.sh bash benchmarks/gpu/attention_prefill.sh
# Results: /tmp/gd/attn-probe.jsonl, attn-tests.log, b64.jsonl.
set -x
W=/tmp/gd
mkdir -p $W
python3 benchmarks/gpu_attention_probe.py --shapes 1b,8b --batches 1 --lengths 256 \
    --prefills 128,512,2048,128x64 --variants now,now:kMmaPrefillTokens=0 --runs 20 --results $W/attn-probe.jsonl
python3 -m pytest -q -p no:cacheprovider tests/test_custom_ops_attention.py > $W/attn-tests.log 2>&1
echo "tests rc $?" >> $W/attn-tests.log
tail -3 $W/attn-tests.log
if [ -n "$SERVE" ]; then
  D="python3 benchmarks/gpu_decode.py --work $W --shapes llama-3.2-1b --concurrency 64 --results $W/b64.jsonl"
  $D --formats fp16-custom --phases build
  for v in OPTIMIZER_ATTN_PREFILL=mma OPTIMIZER_ATTN_PREFILL=cores OPTIMIZER_ATTN_PREFILL=cores \
           OPTIMIZER_ATTN_PREFILL=mma; do
    env $v $D --formats fp16-custom --phases ours | sed "s|^|$v |" | cut -c1-300
  done
fi
echo SESSION DONE
