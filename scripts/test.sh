#!/usr/bin/env bash
# Sets up .venv, then runs the whole test suite on CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two workers, each test file whole on one of them (its module fixtures, SLURM's among them, start once): most
# tests wait on ranks they launched, so two workers fill two cores. The slowest tests are listed: the suite must
# stay under 15 min on 2 cores. `bash scripts/test.sh -n 0` runs it in one process.
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=25 "$@"
