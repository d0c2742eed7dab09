# syntax=docker/dockerfile:1
# The Realm operator: `python -m realm.operator.main` (what charts/realm and manifests/base run).
# Build from the repository root:  docker build -f docker/operator.Dockerfile -t realm-operator .
# Only the operator's own dependencies are installed (no llama.cpp, no wasmtime, no model):
# tests/test_dockerfiles.py checks they match pyproject.toml and cover what the operator imports.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY realm/ realm/
COPY runtime/ runtime/
COPY operator/ operator/
RUN python -m venv /opt/realm \
 && /opt/realm/bin/pip install --no-deps . \
 && /opt/realm/bin/pip install "kopf>=1.38" "kubernetes>=30,<37" "pydantic>=2.7,<3" "pyyaml>=6" \
    "boto3>=1.34" "zstandard>=0.22" \
 && /opt/realm/bin/python -c "import realm.operator.main, realm.operator.handlers"

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/realm /opt/realm
ENV PATH=/opt/realm/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
# Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "realm.operator.main"]
