# The shortest comparison that answers issue 20's batch-1 fp16 target (a session with ~10 min of
# device time left): after staging onnxruntime-gpu (.gpu/c1..c5, no SmolLM2, no CUDA tests), the
# 1B fp16 engine through the custom-ops pipeline (our GEMVs and CachedAttention) at batch 1, then
# onnxruntime-genai's fp16 Generator with its CUDA graph, then ours again, then the same engine
# with onnxruntime's GroupQueryAttention instead of CachedAttention (fp16-custom-gqa).
set -x
W=/tmp/gd
mkdir -p $W
D="python3 benchmarks/gpu_decode.py --work $W --shapes llama-3.2-1b --concurrency 64"
$D --results $W/b1.jsonl --formats fp16-custom --phases build
$D --results $W/b1.jsonl --formats fp16-custom --phases ours
$D --results $W/b1.jsonl --formats fp16 --phases genai
$D --results $W/b1.jsonl --formats fp16-custom --phases ours
$D --results $W/b1.jsonl --formats fp16-custom-gqa --phases build,ours
echo SESSION DONE
