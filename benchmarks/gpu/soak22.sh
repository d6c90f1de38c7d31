# Issue 22's soak on the GPU server (started by run.sh after install.sh, with .gpu/serve carried:
# the wheels of fastapi, uvicorn, pydantic, prometheus-client and httpx2, which the GPU machine
# lacks): SmolLM2-135M (the packaged GGUF, staged as .gpu/s1 + .gpu/s2) as an fp16 engine in each
# KV layout, then benchmarks/soak.py against `optimize serve --provider cuda`: 1,000 requests from
# 64 clients, 30% of them hanging up at a random moment. Knobs: REQUESTS (default 1000).
set -x
W=/tmp/gd
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/serve .gpu/serve/*.whl
export PYTHONPATH=$PYTHONPATH:/tmp/serve
SMOL=$(python3 -m optimizer.cli asset smollm2-135m)
for layout in paged static; do
  [ -f $W/smol-$layout/manifest.json ] || python3 -m optimizer.cli --log-format plain model "$SMOL" \
      --dtype fp16 --kv-layout $layout --kv-slots 64 --out $W/smol-$layout 2>&1 | tail -4
done
python3 benchmarks/soak.py $W/smol-paged --requests "${REQUESTS:-1000}" --concurrency 64 --abort-fraction 0.3 \
    --serve-args "--provider cuda --gpu-memory-fraction 0.5" > $W/soak-paged.json
tail -c 1500 $W/soak-paged.json
python3 benchmarks/soak.py $W/smol-static --requests "${REQUESTS:-1000}" --concurrency 64 --abort-fraction 0.3 \
    --serve-args "--provider cuda" > $W/soak-static.json
tail -c 1500 $W/soak-static.json
for f in $W/soak-*.json; do cp $f ${f%.json}.jsonl; done  # wait.sh brings *.jsonl back
echo SESSION DONE
