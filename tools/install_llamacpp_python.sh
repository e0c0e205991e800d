#!/usr/bin/env bash
# Installs the llama.cpp Python bindings (llama-cpp-python, from PyPI) that
# tests/cli_llamacpp.sh uses to check moetool's GGUF output with llama.cpp
# itself. pip builds the vendored llama.cpp from source (CMake, C/C++ compiler;
# about 5.5 minutes on 2 cores) and caches the wheel in ~/.cache/pip, so a
# later install on the same machine takes a few seconds. No llama.cpp code or
# binary is kept in this repository.
#
# Usage: tools/install_llamacpp_python.sh [--force]
#   --force   rebuild even when the pinned version is already importable
#             (and bypass pip's wheel cache)
# Environment: PYTHON (default python3), LLAMA_CPP_PYTHON_VERSION (default pinned).
set -euo pipefail

PY=${PYTHON:-python3}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
force=0
[ "${1:-}" = "--force" ] && force=1

have=$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null || true)
if [ "$force" = 0 ] && [ "$have" = "$VERSION" ]; then
    echo "llama-cpp-python $have already installed"
    exit 0
fi

# Native CPU flags: the wheel is built for this machine kind (it is cached
# per machine, never shipped). Tests and examples of llama.cpp are not needed.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}

extra=()
[ "$force" = 1 ] && extra=(--force-reinstall --no-cache-dir)

start=$(date +%s)
nice -n 19 "$PY" -m pip install --disable-pip-version-check "${extra[@]}" "llama-cpp-python==$VERSION"
echo "llama-cpp-python $VERSION installed in $(( $(date +%s) - start )) s"
"$PY" -c 'import llama_cpp; print("llama_cpp", llama_cpp.__version__, "importable")'
