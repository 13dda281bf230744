#!/usr/bin/env bash
# N training processes started by mpiexec (any MPI: MPICH from the venv by default, Open MPI, Intel MPI).
# aef_hpc reads rank and size from the MPI environment and meets at rank 0's address (mpi4py broadcasts it).
# Usage:  NP=2 launchers/mpirun.sh [--config FILE] [key=value ...]
#   e.g.  NP=2 launchers/mpirun.sh engine=deepspeed train.steps=200
#         NP=8 HOSTS=node1:4,node2:4 launchers/mpirun.sh engine=ddp
# Env:    NP        processes (default 2)
#         HOSTS     MPICH host list (-hosts); omit on one machine or inside a SLURM allocation
#         MPIEXEC   the mpiexec to use (default: the venv's, PyPI mpich); for Open MPI as root also set
#                   OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
#         VENV      the virtual environment holding aef_hpc (default: .venv of this repository)
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$HERE/.venv}
MPIEXEC=${MPIEXEC:-$VENV/bin/mpiexec}
NP=${NP:-2}
if ! [[ $NP =~ ^[1-9][0-9]*$ ]]; then
  echo "launchers/mpirun.sh: NP=$NP must be a whole number of processes, at least 1 (e.g. NP=2)" >&2
  exit 2
fi
# the configuration (and the engine against the process count) checked once, before any rank starts: a bad key
# is one line, not one per rank
RANK=0 WORLD_SIZE=$NP "$VENV/bin/python" -m aef_hpc.cli train --print-config "$@" > /dev/null || exit $?
ARGS=(-n "$NP")
if [ -n "${HOSTS:-}" ]; then ARGS+=(-hosts "$HOSTS"); fi
exec "$MPIEXEC" "${ARGS[@]}" "$VENV/bin/python" -m aef_hpc.cli train "$@"
