# Session 36's second, short GPU call (~5 minutes of device time were left): the CUDA tests of
# both graph executors (the host path's split steps, the fp8-KV and SmolLM2 tests with the asset
# staged this time) in the background while the 8B shape builds a paged fp16 engine with the
# default block size (128 at head size 128, new this session); then where a 512-row decode
# step's time goes (benchmarks/paged_kernels.py) and one 128/128 run of 512 requests.
set -x
W=/tmp/gd
mkdir -p $W
(python3 -m pytest -q -p no:cacheprovider tests/test_paged_cuda.py tests/test_cuda_graph.py > $W/tests.log 2>&1;
 echo "tests rc $?" >> $W/tests.log) &
TP=$!
python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.1-8b \
    --formats fp16-paged --phases build --max-len 2304
wait $TP; tail -15 $W/tests.log
python3 benchmarks/paged_kernels.py $W/ours-llama-3.1-8b-fp16-paged --batch 512 --steps 10 --results $W/kernels.jsonl
python3 benchmarks/throughput.py ours $W/ours-llama-3.1-8b-fp16-paged --requests 512 --isl 128 --osl 128 --arrivals t0 \
    --prefill-budget 16384 --max-batch 512 --gpu-memory-fraction 0.9 --results $W/throughput.jsonl
echo SESSION DONE
