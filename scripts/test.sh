#!/usr/bin/env bash
# Every test: lint, types, unit and integration tests against the real models.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy runtime realm operator
.venv/bin/python -m pytest -q "$@"
