#!/usr/bin/env bash
# Sets up .venv, then trains aef-center on the embedded digits: prints test bits/dim, writes a sample grid.
# Extra arguments are passed on as config overrides, e.g. `bash scripts/demo.sh model.name=vae`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/aef-hpc train "$@"
