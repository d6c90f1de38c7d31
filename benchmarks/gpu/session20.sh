# Issue 20's GPU session (started by run.sh): the paged layout's CUDA tests (decode steps
# replayed from captured graphs among them), then the Llama-3.2-1B shape in fp16, static and
# paged layouts, each with and without CUDA graphs at batch 1 and CONC concurrent requests;
# the paged engine again with onnxruntime's XQA decode kernel on its fp16 cache
# (ORT_ENABLE_XQA_NATIVE_KV=1; XQA=0 skips it); then (BIG=1) the Llama-3.1-8B shape in int4
# (genai's format) at batch 1, rows and one-row kernels, and 64 concurrent. TESTS=0 skips the tests.
set -x
W=/tmp/gd
if [ "${TESTS:-1}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider tests/test_paged_cuda.py 2>&1 | tail -15
fi
python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.2-1b \
    --formats fp16,fp16-paged --phases bandwidth,build,ours --concurrency "${CONC:-64,256}" --eager-concurrency
if [ "${XQA:-1}" = 1 ]; then
  ORT_ENABLE_XQA_NATIVE_KV=1 python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl \
      --shapes llama-3.2-1b --formats fp16-paged --phases ours --concurrency "${CONC:-64,256}"
fi
if [ -n "$BIG" ]; then
  python3 benchmarks/gpu_decode.py --work $W --results $W/results.jsonl --shapes llama-3.1-8b \
      --formats int4 --phases build,ours --concurrency 64 --runs 3
fi
echo SESSION DONE
