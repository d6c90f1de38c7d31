# The GPU session's first call, before any staging (torch and nvcc only, no onnxruntime; ~3-4 min):
#   bash benchmarks/gpu/chain.sh
# 1. the 1B step's 65 fp16 GEMVs, the product against the PDL candidate (benchmarks/cuda/linear_pdl.cu:
#    preload 2 or 4 chunks, prefetch only weights L2 holds, and without PDL), two rounds;
# 2. the same step through the LinearInt4 family (onnxruntime-genai's int4 format): its first run
#    (max_abs_diff says whether it computes the right thing) and its time against fp16's.
# Results: $OUT/chain.jsonl, $OUT/chain-int4.jsonl.
set -x
cd benchmarks || exit 1
C=file=cuda/linear_pdl.cu
python3 gpu_gemv_chain.py --rounds 2 --results "$OUT/chain.jsonl" \
    --variants now,$C,$C:kPreload=4,$C:kPrefetchBytes=0,$C:env.OPTIMIZER_CUDA_PDL=0
python3 gpu_gemv_chain.py --weights int4 --rounds 2 --results "$OUT/chain-int4.jsonl"
