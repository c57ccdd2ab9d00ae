#!/usr/bin/env bash
# The main job on a fresh machine, offline after the first install: set up, build the embedded
# model's runtime (llama-cpp-python, from source), fetch the default model, execute
# examples/quickstart.ipynb headless (nbclient) with its `%%agent code` cells on that model, save the
# executed notebook and the exported run in ./agent-kernel-demo/, print the answers and check them
# against pandas (exit status 0 only when they are right).
#
# With AGENT_KERNEL_MODEL set (e.g. openai/gpt-4o-mini and OPENAI_API_KEY), that model is used and
# the local model is neither built nor fetched. Extra arguments go to `python -m agent_kernel demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export LITELLM_LOCAL_MODEL_COST_MAP=True
PY=.venv/bin/python

if [ -z "${AGENT_KERNEL_MODEL:-}" ]; then
  if ! "$PY" -c "import llama_cpp" 2>/dev/null; then
    echo "Building llama-cpp-python from source (once; 10-45 minutes on 2 cores)..." >&2
    # Portable x86-64 build (any CPU with AVX2/FMA, i.e. 2013 and later), tuned as far as that allows;
    # only the library the Python bindings load is built (no tools, no multimodal helper).
    if [ "$(uname -m)" = x86_64 ]; then
      ARCH_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    else
      ARCH_FLAGS="-DGGML_NATIVE=OFF"
    fi
    CMAKE_ARGS="$ARCH_FLAGS -DGGML_OPENMP=ON -DGGML_BLAS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      "$PY" -m pip install -q -e ".[local]"
  fi
  "$PY" -m agent_kernel.model_fetch fetch   # the default model; verified, then reused
fi

exec "$PY" -m agent_kernel demo "$@"
