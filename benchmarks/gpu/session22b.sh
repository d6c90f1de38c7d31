# Issue 20 + 22 in one GPU session (started by run.sh; SmolLM2 staged as .gpu/s1 + .gpu/s2 for
# its tokenizer, the text asset in .gpu/text): the Llama-3.1-8B shape built once in three forms
# (paged fp16, paged with the fp8 KV cache, static int4 of one slot in genai's format); int4 at
# batch 1 (issue 20: rows / one-row kernels, with and without graphs); both paged engines
# serving 512 requests of 128/128 (pools from 90% of the GPU, decode steps from captured
# graphs), then transformers compiled at a static batch of 512 (HF=0 skips it).
set -x
W=/tmp/gd
python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.1-8b \
    --formats fp16-paged,fp16-paged-fp8kv,int4 --phases build --concurrency 1
python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.1-8b \
    --formats int4 --phases ours --concurrency 1 --runs 3
for e in fp16-paged fp16-paged-fp8kv; do
  python3 benchmarks/throughput.py ours $W/ours-llama-3.1-8b-$e --requests 512 --isl 128 --osl 128 \
      --arrivals "${RUNS:-t0}" --prefill-budget 16384 --max-batch 512 --gpu-memory-fraction 0.9 \
      --results $W/throughput.jsonl
done
if [ "${HF:-1}" = 1 ]; then
  python3 benchmarks/throughput.py hf llama-3.1-8b --requests 512 --isl 128 --osl 128 --batches 512 \
      --results $W/throughput.jsonl
fi
echo SESSION DONE
