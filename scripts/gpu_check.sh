#!/usr/bin/env bash
# The GPU check, in one call on a machine with one CUDA GPU (under 8 minutes): the kernel tests on the GPU, then
# `aef-hpc bench kernels` (each op against eager and torch.compile, the copy bandwidth of the same run, a training
# step with kernels on and off). Every CSV and log goes under one folder; a step that fails or overruns is
# reported and the next one still runs. Record the numbers in docs/benchmarks.md.
#
#   bash scripts/gpu_check.sh [OUT_DIR]      # default bench/gpu-check-<date>; PYTHON=... picks the interpreter
#   SIZES=all bash scripts/gpu_check.sh      # the benchmark's full size sweep (784 to 3x128x128; slower)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/gpu-check-$(date +%Y%m%d-%H%M%S)}
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
  echo "gpu_check: $out exists and is not empty: name a new folder" >&2
  exit 2
fi
mkdir -p "$out" || { echo "gpu_check: cannot create $out" >&2; exit 2; }
"$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || {
  echo "gpu_check: no CUDA device visible to $python" >&2
  exit 2
}

status=()
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, note the exit status
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout --signal=INT --kill-after=20 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  status+=("$name: exit $rc in $((SECONDS - start)) s")
  tail -n 25 "$out/$name.log"
}

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader 2>&1
  "$python" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "triton", triton.__version__, torch.cuda.get_device_name())'
  git rev-parse --short HEAD 2>/dev/null
} | tee "$out/environment.txt"

workers=()
"$python" -c 'import xdist' 2>/dev/null && workers=(-n 8)  # compiles dominate: spread them over processes
step kernel_tests 240 "$python" -m pytest -q -p no:cacheprovider --device cuda "${workers[@]}" tests/test_kernels.py

sizes='{"784": 784, "3x64x64": 3 * 64 * 64}'
[ "${SIZES:-}" = all ] && sizes='None'
step bench_kernels 270 "$python" -c "
from aef_hpc.bench import kernels as k
sizes = $sizes
rows = k.run('$out/kernels.csv', '$out/kernels.png', **({} if sizes is None else {'sizes': sizes}))
print(k.table(rows))"

echo "== summary ($out)"
printf '%s\n' "${status[@]}" | tee "$out/summary.txt"
! grep -q -v ': exit 0 in' "$out/summary.txt"
