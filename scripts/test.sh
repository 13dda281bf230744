#!/usr/bin/env bash
# Sets up .venv, then runs the whole test suite on CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q --durations=25 "$@"  # the slowest tests listed: the suite must stay under 15 min on 2 cores
