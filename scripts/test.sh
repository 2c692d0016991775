#!/usr/bin/env bash
# The README's test command: set up .venv if needed, lint, and run the test suite.
# Two pytest-xdist workers (CI has two cores); extra arguments go to pytest, e.g. `scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check .
.venv/bin/python -m pytest -n 2 "$@"
