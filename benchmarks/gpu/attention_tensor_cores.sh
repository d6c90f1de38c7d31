# CachedAttention on tensor cores (runtime/custom_ops/attention_mma.cuh: the prefill from 16 new tokens a
# row, decode steps from 128 blocks) against the CUDA-core kernels before it, after staging onnxruntime-gpu
# (.gpu/c1..c5):
# 1. benchmarks/gpu_attention_probe.py at the 1B and 8B shapes, each call checked against torch and
#    timed a layer (captured), torch's SDPA beside it: decode steps at batch 1, 16 and 64 over 256 and
#    1,024 positions and verification calls (4 new tokens in 16 rows, 2 in 64), tensor cores (`now`) and
#    not (kMmaDecodeBlocks=0); first prefills of 128 and 2,048 tokens at batch 1 and of 128 tokens in 64
#    rows, tensor cores and not (kMmaPrefillTokens=0);
# 2. the CachedAttention CUDA tests (tests/test_custom_ops_attention.py: eager and captured, against
#    the op's CPU kernel), into /tmp/gd/attn-tests.log;
# 3. with SERVE=1: the 1B fp16-custom engine built, then 64 concurrent 128 in / 128 out requests with
#    OPTIMIZER_ATTN_TENSOR_CORES=on, off, off, on (one process each, in that order).
#   SERVE=1 bash benchmarks/gpu/run.sh bash benchmarks/gpu/attention_tensor_cores.sh
# NOPROBE=1 leaves step 1 out (the probe needs only torch and nvcc: it can run before the staging).
# Results: /tmp/gd/attn-probe.jsonl, attn-tests.log, b64.jsonl.
set -x
W=/tmp/gd
mkdir -p $W
if [ -z "$NOPROBE" ]; then
  python3 benchmarks/gpu_attention_probe.py --shapes 1b,8b --batches 1,16,64 --lengths 256,1024 \
      --decode-variants now,now:kMmaDecodeBlocks=0 --calls 4x16@256,2x64@1024 --prefills 128,2048,128x64 \
      --variants now,now:kMmaPrefillTokens=0 --runs 20 --results $W/attn-probe.jsonl
fi
python3 -m pytest -q -p no:cacheprovider tests/test_custom_ops_attention.py > $W/attn-tests.log 2>&1
echo "tests rc $?" >> $W/attn-tests.log
tail -3 $W/attn-tests.log
if [ -n "$SERVE" ]; then
  D="python3 benchmarks/gpu_decode.py --work $W --shapes llama-3.2-1b --concurrency 64 --results $W/b64.jsonl"
  $D --formats fp16-custom --phases build
  for v in on off off on; do
    env OPTIMIZER_ATTN_TENSOR_CORES=$v $D --formats fp16-custom --phases ours | sed "s|^|tensor cores $v |" \
        | cut -c1-300
  done
fi
echo SESSION DONE
