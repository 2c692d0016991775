#!/usr/bin/env bash
# The README's test command: set up .venv if needed, lint, and run the test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m slow` for the heavy sweeps.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
