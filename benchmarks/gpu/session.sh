# One GPU session's work, in order (started by run.sh; see README.md): the CUDA tests, our
# engines at the 1B shape (built, then timed), the kernel profile of their decode steps, the
# peers in the same session, then (SERVE=1) the serving throughput at the 8B shape (fp16, 512
# slots: benchmarks/throughput.py, ours and transformers compiled) and (BIG=1) the 8B shape in
# int4 at batch 1 and 64. Knobs: FORMATS (default fp16,int4), CONC (default 16,64,256), OURS
# (default bandwidth,build,ours) and PEERS (default hf,genai; empty: none) choose what
# benchmarks/gpu_decode.py runs; TESTS=0 skips the CUDA tests.
set -x
W=/tmp/gd
if [ "${TESTS:-1}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py tests/test_paged_cuda.py 2>&1 | tail -15
fi
python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.2-1b \
    --formats "${FORMATS:-fp16,int4}" --phases "${OURS:-bandwidth,build,ours}" --concurrency "${CONC:-16,64,256}"
python3 benchmarks/gpu_kernels.py $W/ours-llama-3.2-1b-fp16 $W/ours-llama-3.2-1b-int4 --batch 1,64 \
    --results $W/kernels.jsonl
if [ -n "${PEERS-hf,genai}" ]; then
  python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.2-1b \
      --formats fp16,int4 --phases "${PEERS-hf,genai}" --concurrency "${CONC:-16,64,256}"
fi
if [ -n "$SERVE" ]; then
  python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.1-8b \
      --formats fp16 --phases build --concurrency 512
  python3 benchmarks/throughput.py ours $W/ours-llama-3.1-8b-fp16 --requests 512 --isl 128 --osl 128 \
      --arrivals "t0,poisson:${RATE:-64}" --results $W/throughput.jsonl
  python3 benchmarks/throughput.py hf llama-3.1-8b --requests 512 --isl 128 --osl 128 \
      --batches "${HF_BATCHES:-256,512}" --results $W/throughput.jsonl
fi
if [ -n "$BIG" ]; then
  python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.1-8b \
      --formats int4 --phases build,ours --concurrency 64 --runs 3
fi
echo SESSION DONE
