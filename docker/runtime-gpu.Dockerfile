# syntax=docker/dockerfile:1
# The GPU runtime: `realm serve` with `engine: trtllm` versions on TensorRT-LLM (docs/trtllm.md).
# Build from the repository root:  docker build -f docker/runtime-gpu.Dockerfile -t realm-runtime-gpu .
# The base image brings CUDA, TensorRT-LLM and its Python; no model is baked in (weights come from a
# PersistentVolumeClaim or an HF checkpoint folder mounted by the Model).
#
# Not built or run here (no Docker engine, no GPU): the tag and the Python version are untested.
# TensorRT-LLM's release images ship their own Python (3.12 in recent ones) while pyproject.toml
# says <3.12, hence --ignore-requires-python.
#
# llama.cpp is built too, by scripts/build-llama.sh cuda: ggml's CUDA backend plus every CPU variant,
# so a `llamacpp` version on a GPU pod offloads its layers (the operator sets nGpuLayers: -1 when the
# Model asks for a GPU) and still runs on the CPU of any node. CUDA_ARCHITECTURES picks the GPUs.
# Python dependencies (and cmake, and the realm package's build backend) come only from the hash-locked
# docker/requirements-*.lock files.

ARG TRTLLM_IMAGE=nvcr.io/nvidia/tensorrt-llm/release:1.0.0

FROM ${TRTLLM_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
ARG CUDA_ARCHITECTURES="80;86;89;90"
WORKDIR /src
COPY scripts/build-llama.sh scripts/
COPY docker/requirements-cmake.lock docker/requirements-build.lock docker/requirements-runtime-gpu.lock docker/
# The base image has nvcc and a C++ toolchain; cmake (>= 3.21) and the realm package's build backend
# come from PyPI, into a prefix that the final stage leaves behind.
RUN python3 -m pip install --no-deps --require-hashes --prefix=/opt/build-tools \
      -r docker/requirements-cmake.lock -r docker/requirements-build.lock \
 && wheel="$(PATH=/opt/build-tools/bin:$PATH PYTHONPATH="$(python3 -c 'import sys; print("/opt/build-tools/lib/python%d.%d/site-packages" % sys.version_info[:2])')" \
      CUDA_ARCHITECTURES="$CUDA_ARCHITECTURES" REALM_CACHE=/tmp/llama PYTHON=python3 scripts/build-llama.sh cuda)" \
 && python3 -m pip install --no-deps --prefix=/opt/realm /tmp/llama/llama-cpp-python/*/llama_cpp_python-*.whl \
 && cp "$(dirname "$wheel")/BUILD-INFO" /opt/realm/lib/python3*/site-packages/llama_cpp/realm-build.txt \
 && rm -rf /tmp/llama \
 && python3 -m pip install --no-deps --require-hashes --ignore-requires-python --prefix=/opt/realm \
      -r docker/requirements-runtime-gpu.lock
COPY pyproject.toml setup.py README.md ./
COPY realm/ realm/
COPY runtime/ runtime/
COPY operator/ operator/
# Installed into a prefix of its own so the final stage copies only Realm and the packages it adds.
RUN PYTHONPATH="$(python3 -c 'import sys; print("/opt/build-tools/lib/python%d.%d/site-packages" % sys.version_info[:2])')" \
      python3 -m pip install --no-deps --no-build-isolation --ignore-requires-python --prefix=/opt/realm . \
 && rm -rf /opt/build-tools

FROM ${TRTLLM_IMAGE}
COPY --from=build /opt/realm /opt/realm
ENV PATH=/opt/realm/bin:$PATH HOME=/tmp PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The prefix's site-packages, whatever the base image's Python version is.
RUN python3 -c "import site, sys; print('/opt/realm/lib/python%d.%d/site-packages' % sys.version_info[:2])" \
      > "$(python3 -c 'import site; print(site.getsitepackages()[0])')/realm-prefix.pth" \
 && realm serve --help > /dev/null
USER 10001:10001
EXPOSE 8000 9090
ENTRYPOINT ["realm"]
CMD ["serve", "--config", "/etc/realm/config.yaml", "--host", "0.0.0.0", "--port", "8000", "--metrics-port", "9090"]
