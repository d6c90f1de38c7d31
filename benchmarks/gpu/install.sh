# Install onnxruntime-gpu (its five chunks, staged by ../shared/gpu/stage-ort-gpu.sh and copied to
# /tmp/parts by five calls carrying .gpu/c1 .. .gpu/c5) and onnxruntime-genai-cuda (a wheel in
# .gpu/genai) once per warm GPU machine, then put them and the repository on PYTHONPATH.
if [ ! -d /tmp/ortgpu/onnxruntime ]; then
  n=$(cat /tmp/parts/WHEEL_NAME); cat /tmp/parts/part? > /tmp/$n
  echo "md5 $(md5sum /tmp/$n | cut -d' ' -f1) want $(cat /tmp/parts/WHEEL_MD5)"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/ortgpu /tmp/$n
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/genai .gpu/genai/*.whl
fi
export PYTHONPATH=/tmp/ortgpu:/tmp/genai:$PWD
export PYTHONUNBUFFERED=1
