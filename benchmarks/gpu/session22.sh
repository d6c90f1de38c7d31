# Issue 22's GPU session (started by run.sh): the CUDA tests of the paged executor (tokens on
# the device, the pool sized from GPU memory), the FP8 GEMM forms at serving sizes, then the
# Llama-3.1-8B shape fp16 in both layouts (static 512 slots; paged, its pool from 90% of the
# GPU), FP8 (static) and transformers compiled, 512 requests of 128/128 each, in one call. Knobs: TESTS=0
# skips the tests, PROBE=0 the FP8 probe, HF=0 transformers, RUNS (default t0,t0) the
# arrivals of each of our runs.
set -x
W=/tmp/gd
if [ "${TESTS:-1}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider tests/test_paged_cuda.py tests/test_gpu_memory.py 2>&1 | tail -15
fi
if [ "${PROBE:-1}" = 1 ]; then
  python3 benchmarks/fp8_gemm_shapes.py --rows 16,128,512,4096,16384 --results $W/fp8-gemm.jsonl | \
      python3 -c "import json,sys; [print(r['form'], r['linear'], r['m'], r['us'], r['tflops'], r.get('vs_fp16')) for r in map(json.loads, sys.stdin)]"
fi
python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.1-8b \
    --formats "${FORMATS:-fp16,fp16-paged,fp8}" --phases build --concurrency 512
python3 benchmarks/throughput.py ours $W/ours-llama-3.1-8b-fp16 --requests 512 --isl 128 --osl 128 \
    --arrivals "${RUNS:-t0,t0}" --prefill-budget 16384 --results $W/throughput.jsonl
python3 benchmarks/throughput.py ours $W/ours-llama-3.1-8b-fp16-paged --requests 512 --isl 128 --osl 128 \
    --arrivals "${RUNS:-t0,t0}" --prefill-budget 16384 --max-batch 512 --gpu-memory-fraction 0.9 \
    --results $W/throughput.jsonl
if [ -d $W/ours-llama-3.1-8b-fp8 ]; then  # FP8 W8A8, native FP8 GEMMs where onnxruntime takes them
  python3 benchmarks/throughput.py ours $W/ours-llama-3.1-8b-fp8 --requests 512 --isl 128 --osl 128 \
      --arrivals "${RUNS:-t0,t0}" --prefill-budget 16384 --results $W/throughput.jsonl
fi
if [ "${HF:-1}" = 1 ]; then
  python3 benchmarks/throughput.py hf llama-3.1-8b --requests 512 --isl 128 --osl 128 --batches 512 \
      --results $W/throughput.jsonl
fi
echo SESSION DONE
