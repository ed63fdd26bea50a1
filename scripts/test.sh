#!/usr/bin/env bash
# The test suite: sets up .venv if needed, then runs pytest (extra args pass through,
# e.g. `-m "not slow"` to skip the stock entry-point runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q tests "$@"
