# Where the 1B int4-custom step at batch 64 loses to fp16-custom's end to end (after staging
# onnxruntime-gpu, .gpu/c1..c5; ~4 min of device time): both engines built, then each step's
# kernels with plain launches (OPTIMIZER_CUDA_PDL=0: a programmatic dependent launch starts early
# and waits, so its time under the profiler would include the kernel before it), and int4-custom
# at 64 concurrent 128 in / 128 out with and without programmatic launches.
# Results: /tmp/gd/kernels.jsonl, b64.jsonl in the log.
set -x
W=/tmp/gd
mkdir -p $W
D="python3 benchmarks/gpu_decode.py --work $W --shapes llama-3.2-1b --concurrency 64 --results $W/b64.jsonl"
$D --formats fp16-custom,int4-custom --phases build
OPTIMIZER_CUDA_PDL=0 python3 benchmarks/gpu_kernels.py $W/ours-llama-3.2-1b-fp16-custom \
    $W/ours-llama-3.2-1b-int4-custom --batch 64 --results $W/kernels.jsonl | cut -c1-300
OPTIMIZER_CUDA_PDL=0 $D --formats int4-custom --phases ours
$D --formats int4-custom --phases ours
echo SESSION DONE
