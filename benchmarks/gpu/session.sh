# One GPU session's work, in order (started by run.sh; see README.md): the CUDA tests, our
# engines at the 1B shape (built, then timed), the kernel profile of their decode steps, the
# peers in the same session, then (BIG=1) the 8B shape in int4. OURS (default
# bandwidth,build,ours) and PEERS (default hf,genai; empty: none) choose the phases of
# benchmarks/gpu_decode.py.
set -x
W=/tmp/gd
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py tests/test_paged_cuda.py 2>&1 | tail -15
python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.2-1b \
    --formats fp16,int4 --phases "${OURS:-bandwidth,build,ours}"
python3 benchmarks/gpu_kernels.py $W/ours-llama-3.2-1b-fp16 $W/ours-llama-3.2-1b-int4 --batch 1,64 \
    --results $W/kernels.jsonl
if [ -n "${PEERS-hf,genai}" ]; then
  python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.2-1b \
      --formats fp16,int4 --phases "${PEERS-hf,genai}"
fi
if [ -n "$BIG" ]; then
  python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.1-8b \
      --formats int4 --phases build,ours --concurrency 64 --runs 3
fi
echo SESSION DONE
