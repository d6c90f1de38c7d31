# A short second job (2026-12-03): which int4 format plain `--quant int4` should give on CUDA
# (issue 23 item 5's CUDA half). The 1B shape's static engines (64 slots): fp16, the CPU-fast
# default (int4-default: g64 asymmetric, 8-bit lm_head, accuracy level 4) and symmetric blocks of
# 64 with a 4-bit, 8-bit and float lm_head; batch 1 and 64 concurrent, one call.
set -x
W=/tmp/gd
mkdir -p $W
F=fp16,int4-default,int4-g64,int4-g64-head8,int4-g64-headfp16
python3 benchmarks/gpu_decode.py --work $W --results $W/formats.jsonl --shapes llama-3.2-1b --formats $F \
    --phases build,ours --concurrency 64 --runs 3
echo SESSION DONE
