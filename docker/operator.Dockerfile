# syntax=docker/dockerfile:1
# The Realm operator: `python -m realm.operator.main` (what charts/realm and manifests/base run).
# Build from the repository root:  docker build -f docker/operator.Dockerfile -t realm-operator .
# Only the operator's own dependencies are installed (no llama.cpp, no wasmtime, no model), every file
# from PyPI checked against docker/requirements-operator.lock's hashes (and the build backend against
# requirements-build.lock's): tests/docker/test_dockerfiles.py checks they match pyproject.toml and
# cover what the operator imports.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY docker/requirements-operator.lock docker/requirements-build.lock docker/
RUN python -m venv /opt/realm \
 && python -m venv /opt/build-tools \
 && /opt/build-tools/bin/pip install --no-deps --require-hashes -r docker/requirements-build.lock \
 && /opt/realm/bin/pip install --no-deps --require-hashes -r docker/requirements-operator.lock
COPY pyproject.toml setup.py README.md ./
COPY realm/ realm/
COPY runtime/ runtime/
COPY operator/ operator/
RUN PYTHONPATH="$(/opt/build-tools/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
      /opt/realm/bin/pip install --no-deps --no-build-isolation . \
 && /opt/realm/bin/pip check \
 && /opt/realm/bin/python -c "import realm.operator.main, realm.operator.handlers"

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/realm /opt/realm
ENV PATH=/opt/realm/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
# Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "realm.operator.main"]
