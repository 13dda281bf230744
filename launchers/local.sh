#!/usr/bin/env bash
# N training processes on this machine with torchrun (one per GPU, or N CPU processes on gloo).
# Usage:  NPROC=2 launchers/local.sh [--config FILE] [key=value ...]
#   e.g.  NPROC=2 launchers/local.sh engine=ddp train.steps=200
#         NPROC=4 launchers/local.sh engine=deepspeed deepspeed.config=configs/deepspeed/zero3.yaml
# Env:    NPROC       processes (default: the GPUs visible, else 2)
#         VENV        the virtual environment holding aef_hpc (default: .venv of this repository)
#         MASTER_PORT rendezvous port (default: a free one, torchrun --standalone)
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$HERE/.venv}
GPUS=$("$VENV/bin/python" -c 'import torch; print(torch.cuda.device_count())')
NPROC=${NPROC:-$([ "$GPUS" -gt 0 ] && echo "$GPUS" || echo 2)}
if ! [[ $NPROC =~ ^[1-9][0-9]*$ ]]; then
  echo "launchers/local.sh: NPROC=$NPROC must be a whole number of processes, at least 1 (e.g. NPROC=2)" >&2
  exit 2
fi
# the configuration (and the engine against the process count) checked once, before any rank starts: a bad key
# is one line, not one per rank
RANK=0 WORLD_SIZE=$NPROC "$VENV/bin/python" -m aef_hpc.cli train --print-config "$@" > /dev/null || exit $?
if [ -n "${MASTER_PORT:-}" ]; then
  RDZV=(--master-addr 127.0.0.1 --master-port "$MASTER_PORT")
else
  RDZV=(--standalone)
fi
# torchrun without its traceback under a failed rank's own message (aef_hpc/torchrun.py)
exec "$VENV/bin/python" -m aef_hpc.torchrun "${RDZV[@]}" --nnodes 1 --nproc-per-node "$NPROC" -m aef_hpc.cli train "$@"
