#!/usr/bin/env bash
# Build llama.cpp's llama-server (the peer of benchmarks/prefix_cache.py) from the llama.cpp
# sources vendored in llama-cpp-python's source distribution on PyPI (no other download: the
# web UI is left out, no prebuilt UI fetched). About 10 minutes on 2 cores.
#
#   bash benchmarks/build_llama_server.sh /tmp/llamacpp    # -> /tmp/llamacpp/build/bin/llama-server
set -euo pipefail
WORK="${1:-/tmp/llamacpp}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$WORK"
"$PYTHON" -m pip download --no-deps --no-binary :all: -d "$WORK" "llama-cpp-python==$VERSION" >/dev/null
tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
cmake -S "$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON >/dev/null
cmake --build "$WORK/build" --target llama-server -j"$(nproc)"
"$WORK/build/bin/llama-server" --version
