#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run it all:
# lint, types, and the tests against real servers.  Idempotent; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

# System packages for the real SSH server and Slurm used by the remote-site tests.
if [ -x scripts/system-deps.sh ]; then
    scripts/system-deps.sh
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/mypy --strict bench adapters
# The layers of ARCHITECTURE.md (pyproject.toml [tool.importlinter]): fails on the first upward import.
.venv/bin/lint-imports
# Performance smoke: fails only if a benchmark crashes; figures are not judged.
.venv/bin/python -m bench --quick
# The real Mermaid parser (Node.js), which checks the diagrams `lwfm-bus graph` draws.
(cd tests/js && npm ci --no-audit --no-fund --silent)
.venv/bin/python -m pytest "$@"
