# Start a GPU job detached on the GPU machine (a call returns at once; the machine stays warm
# while calls keep coming), after install.sh has staged onnxruntime-gpu, e.g.
#   bash benchmarks/gpu/run.sh python3 benchmarks/gpu_decode.py --work /tmp/gd --results /tmp/gd/results.jsonl \
#       --shapes llama-3.2-1b --formats fp16,int4 --phases bandwidth,build,ours,hf,genai
# or a script of several such lines: bash benchmarks/gpu/run.sh bash benchmarks/gpu/session.sh
# Its output goes to /tmp/gd/log; benchmarks/gpu/wait.sh waits for it.
cp .gpu/c5/* /tmp/parts/ 2>/dev/null; source benchmarks/gpu/install.sh || exit 1
mkdir -p /tmp/gd
setsid nohup "$@" > /tmp/gd/log 2>&1 < /dev/null &
echo $! > /tmp/gd/pid
sleep 2; echo started; tail -3 /tmp/gd/log
