#!/usr/bin/env bash
# Every test: lint, types, unit and integration tests against the real models, then the e2e
# suite against a real Kubernetes control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy  # packages = ["realm"] in pyproject.toml: runtime/ and operator/ through realm/
# The real control plane (etcd, kube-apiserver, controllers, kwok, helm) built from the Go module
# proxy once per version into ~/.cache/realm-e2e (about 8 minutes on 2 cores; instant afterwards).
e2e/cluster/build.sh
.venv/bin/python -m pytest -q tests e2e "$@"
