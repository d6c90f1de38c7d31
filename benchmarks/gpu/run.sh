# Start benchmarks/gpu_decode.py detached on the GPU machine (a call returns at once; the
# machine stays warm while calls keep coming), after install.sh has staged onnxruntime-gpu:
#   bash benchmarks/gpu/run.sh --shapes llama-3.2-1b --formats fp16,int4 --phases bandwidth,build,ours,hf,genai
cp .gpu/c5/* /tmp/parts/ 2>/dev/null; source benchmarks/gpu/install.sh
mkdir -p /tmp/gd
setsid nohup python3 benchmarks/gpu_decode.py --work /tmp/gd --results /tmp/gd/results.jsonl "$@" \
    > /tmp/gd/log 2>&1 < /dev/null &
sleep 2; echo started; tail -3 /tmp/gd/log
