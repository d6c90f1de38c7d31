# The GPU session's first call, before any staging (torch and nvcc only, no onnxruntime; ~6 min):
#   bash benchmarks/gpu/chain.sh
# 0. our CachedAttention kernel's first run (runtime/custom_ops/attention.cu): checked against torch
#    (max_abs_diff, cache_diff) and timed per layer at decode, 1B and 8B shapes, batch 1 and 64,
#    128-1024 positions, beside torch's SDPA (benchmarks/gpu_attention_probe.py); first prefills of
#    128 and 2,048 tokens with a block per query (the default) and with blocks of 4 and 8 queries
#    sharing their key and value reads (kPrefillQueries): set the best as attention.cu's default;
#    decode also with a block per kv group's 4 query heads at large grids (kGroupQueries=4: batch 64
#    reads each key and value row once a group, not once a head);
# 1. the 1B step's 65 fp16 GEMVs, the product's defaults (run13's kernel) against its tunables set
#    (runtime/custom_ops/linear.cu: kProgrammatic, kPreload, kPrefetchBytes): programmatic
#    dependent launches alone, with a preload of 2 or 4 chunks, with the prefetch of the weights L2
#    holds; two rounds;
#    Then the same step with each layer's CachedAttention between q/k/v and o (over 256 positions):
#    the GPU time of a custom-ops decode step but for the embedding, final norm and argmax;
# 2. that step through the LinearInt4 family (onnxruntime-genai's int4 format): its first run
#    (max_abs_diff says whether it computes the right thing) and its time against fp16's.
# 3. the int4 GEMM probe against cuBLAS fp16 at 16-128 rows (below).
# Results: $OUT/attention-probe.jsonl, $OUT/chain.jsonl, $OUT/chain-attention.jsonl, $OUT/chain-int4.jsonl,
# $OUT/int4-gemm-probe.jsonl.
set -x
cd benchmarks || exit 1
python3 gpu_attention_probe.py --results "$OUT/attention-probe.jsonl" \
    --variants now,now:kPrefillQueries=4,now:kPrefillQueries=8 --decode-variants now,now:kGroupQueries=4
P=now:kProgrammatic=true
python3 gpu_gemv_chain.py --rounds 2 --results "$OUT/chain.jsonl" \
    --variants now,$P,$P:kPreload=2,$P:kPreload=4,$P:kPreload=2:kPrefetchBytes=16L\<\<20
python3 gpu_gemv_chain.py --attention 256 --rounds 2 --results "$OUT/chain-attention.jsonl" --variants now,$P
python3 gpu_gemv_chain.py --weights int4 --attention 256 --rounds 2 --results "$OUT/chain-int4.jsonl" \
    --variants now,$P
# 3. the int4 GEMM probe (runtime/custom_ops/gemm_int4_mma.cuh: the 4-bit codes read straight into
#    mma.sync's registers; LinearInt4 above 4 rows with OPTIMIZER_INT4_GEMM=mma) against cuBLAS
#    fp16 and the banded path at 16-128 rows, both shapes (issue 20: int4 no slower than fp16 at 64).
python3 gpu_int4_gemm_probe.py --shapes 1b,8b --rows 16,32,64,128 --results "$OUT/int4-gemm-probe.jsonl"
