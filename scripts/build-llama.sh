#!/usr/bin/env bash
# Builds the llama-cpp-python wheel once per build key and prints its path.
#
#   scripts/build-llama.sh [portable|native|cuda] [--print-path]
#
# portable (the default, what Realm ships): llama.cpp's release recipe. Every ggml CPU variant is built
#   as a loadable backend (x86-64: x64 ... haswell, skylakex, icelake, zen4, sapphirerapids; arm64:
#   armv8.0 ... armv9.2) and the runtime loads the best one the CPU in hand supports
#   (runtime/engines/ggml_backends.py). The wheel runs on any CPU of its architecture.
# native: -march=native for this CPU only, AMX kernels off (the benchmark's peer). Its key includes the
#   CPU's flags, so a cache that moves to another CPU never hands it back.
# cuda: portable plus ggml's CUDA backend (the GPU image; needs nvcc), for CUDA_ARCHITECTURES
#   (default 80;86;89;90: A100, A10/L4... RTX 30, L40/RTX 40, H100/H200).
#
# The wheel lands in ${REALM_CACHE:-~/.cache/realm}/llama-cpp-python/<version>-<flavour>-<key>/, where the
# key hashes everything the build depends on: version, flavour, CMake arguments, architecture, Python
# tag, compiler and CMake versions (and the CPU's flags for native). pip builds with --no-cache-dir: its
# own wheel cache keys by the sdist alone and would hand back a build made with other flags.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_VERSION=0.3.36
flavour=portable
print_only=0
for arg in "$@"; do
    case "$arg" in
        portable | native | cuda) flavour=$arg ;;
        --print-path) print_only=1 ;;
        *) echo "build-llama: unknown argument $arg (portable, native, cuda, --print-path)" >&2; exit 2 ;;
    esac
done

PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
case "$flavour" in
    # GGML_BACKEND_DIR installs the variants next to libggml (the wheel would otherwise put them in
    # a top-level bin/ folder, i.e. site-packages/bin). :STRING keeps it relative to the wheel's root:
    # CMake makes an untyped relative value of a PATH cache entry absolute, and the variants vanish.
    portable) cmake_args="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_BACKEND_DIR:STRING=llama_cpp/lib" ;;
    # AMX off (x86-64): llama.cpp's AMX kernels die with SIGILL (runtime/engines/ggml_backends.py); the
    # portable build leaves them out too, so the two are compared on the same kernels.
    native) cmake_args="-DGGML_NATIVE=ON"
        [[ "$(uname -m)" == x86_64 ]] && cmake_args+=" -DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8" ;;
    cuda) cmake_args="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_BACKEND_DIR:STRING=llama_cpp/lib \
-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES:-80;86;89;90}" ;;
esac
cpu_key=""
if [[ "$flavour" == native ]]; then
    cpu_key=$( (grep -m1 -E '^(flags|Features)' /proc/cpuinfo || uname -m) | tr ' ' '\n' | sort | tr '\n' ' ')
fi
key=$(
    {
        echo "$LLAMA_VERSION $flavour $cmake_args"
        uname -m
        "$PY" -c 'import sys, sysconfig; print(sys.implementation.cache_tag, sysconfig.get_platform())'
        cc --version 2>/dev/null | head -1
        c++ --version 2>/dev/null | head -1
        cmake --version 2>/dev/null | head -1
        [[ "$flavour" == cuda ]] && { nvcc --version 2>/dev/null | tail -1; }
        echo "$cpu_key"
    } | sha256sum | cut -c1-16
)
cache=${REALM_CACHE:-$HOME/.cache/realm}
dir="$cache/llama-cpp-python/$LLAMA_VERSION-$flavour-$key"

wheel() { ls "$dir"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -1; }

# Everything runs from main, parsed before it starts: editing this file during a build is harmless.
main() {
    if [[ $print_only == 1 ]]; then
        echo "$dir"
        exit 0
    fi
    if [[ -n "$(wheel)" ]]; then
        wheel
        exit 0
    fi

    mkdir -p "$dir"
    exec 9>"$dir/.lock"
    flock 9
    if [[ -n "$(wheel)" ]]; then
        wheel
        exit 0
    fi

    estimate="about 6 minutes on 2 cores"
    [[ "$flavour" == portable ]] && estimate="about 7-11 minutes on 2 cores: every CPU variant is compiled"
    echo "build-llama: building llama-cpp-python $LLAMA_VERSION ($flavour, $estimate)" >&2
    echo "build-llama:   CMAKE_ARGS=$cmake_args" >&2
    echo "build-llama:   cached in $dir (log: $dir/build.log)" >&2
    start=$SECONDS
    tmp="$dir/.tmp"
    rm -rf "$tmp"
    if ! CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
        "$PY" -m pip wheel --no-cache-dir --no-deps -w "$tmp" "llama-cpp-python==$LLAMA_VERSION" >"$dir/build.log" 2>&1; then
        tail -n 30 "$dir/build.log" >&2
        echo "build-llama: FAILED after $((SECONDS - start)) s building llama-cpp-python ($flavour); full log: $dir/build.log" >&2
        echo "build-llama: it needs a C/C++ compiler and CMake >= 3.21; retry with: scripts/build-llama.sh $flavour" >&2
        exit 1
    fi
    if [[ "$flavour" != native ]]; then
        # A portable wheel without its CPU variants would load no backend at all: refuse to cache it.
        variants=$("$PY" -c 'import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist(); print(" ".join(sorted(n.split("libggml-cpu-")[1][:-3] for n in names if n.startswith("llama_cpp/lib/libggml-cpu-"))))' "$tmp"/*.whl)
        if [[ -z "$variants" ]]; then
            echo "build-llama: FAILED: the wheel holds no llama_cpp/lib/libggml-cpu-*.so (CMAKE_ARGS=$cmake_args)" >&2
            exit 1
        fi
        echo "build-llama:   CPU variants: $variants" >&2
    fi
    {
        echo "llama-cpp-python $LLAMA_VERSION ($flavour)"
        echo "CMAKE_ARGS=$cmake_args"
        echo "built $(date -u +%FT%TZ) in $((SECONDS - start)) s on $(uname -m), $(nproc) cores"
        cc --version | head -1
    } >"$tmp/BUILD-INFO"
    mv "$tmp"/* "$dir"/
    rmdir "$tmp"
    echo "build-llama: built in $((SECONDS - start)) s" >&2
    wheel
}

main
exit $?
