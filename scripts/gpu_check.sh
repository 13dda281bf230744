#!/usr/bin/env bash
# The GPU check, in one call on a machine with one CUDA GPU (about 5 minutes expected; the step limits add up to
# 9.5 minutes, under a lent device's 10-minute command limit): the kernel tests on the GPU;
# `aef-hpc bench kernels` (each op against eager and torch.compile, the copy bandwidth of the same run); `bench train`
# of the big nets with the fused kernels on and off; `bench eval --vs-limit`; a 2-process DDP and ZeRO-3 training run
# (NCCL with 2 GPUs or more; on one GPU, which NCCL refuses to two ranks, gloo, said in the summary). Every CSV, run
# folder and log goes under one folder; a step that fails or overruns is reported and the next one still runs.
# Record the numbers in docs/benchmarks.md.
#
#   bash scripts/gpu_check.sh [OUT_DIR]      # default bench/gpu-check-<date>; PYTHON=... picks the interpreter
#   SIZES=all bash scripts/gpu_check.sh      # the benchmark's full size sweep (784 to 3x128x128; slower)
#   bash scripts/gpu_check.sh --cpu-smoke OUT_DIR
#                                            # every step, tiny, on the CPU (Triton's interpreter, gloo): checks
#                                            # this script, not speed (the test suite runs it)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
smoke=false
out=
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) smoke=true ;;
    -*) echo "gpu_check: unknown option $arg: use --cpu-smoke or an output folder" >&2; exit 2 ;;
    *) [ -z "$out" ] || { echo "gpu_check: one output folder, not $out and $arg" >&2; exit 2; }; out=$arg ;;
  esac
done
out=${out:-bench/gpu-check-$(date +%Y%m%d-%H%M%S)}
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
  echo "gpu_check: $out exists and is not empty: name a new folder" >&2
  exit 2
fi
if $smoke; then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""  # the interpreter, and no GPU even where there is one
  device=cpu
else
  "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || {
    echo "gpu_check: no CUDA device visible to $python (bash scripts/gpu_check.sh --cpu-smoke OUT checks the script on a CPU)" >&2
    exit 2
  }
  device=cuda
fi
mkdir -p "$out" || { echo "gpu_check: cannot create $out" >&2; exit 2; }

status=()
step() {  # step NAME SECONDS COMMAND...: run with a time limit (x3 in the smoke: a loaded CI machine), log to
  # $out/NAME.log, note the exit status
  local name=$1 limit=$2
  $smoke && limit=$((limit * 3))
  shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout --signal=INT --kill-after=20 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  status+=("$name: exit $rc in $((SECONDS - start)) s${note:+ ($note)}")
  note=
  tail -n 25 "$out/$name.log"
  return $rc
}
note=

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  $smoke || nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader 2>&1
  "$python" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "triton", triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")'
  git rev-parse --short HEAD 2>/dev/null
} | tee "$out/environment.txt"

if $smoke; then
  step kernel_tests 40 "$python" -m pytest -q -p no:cacheprovider tests/test_kernels.py \
    -k "test_interpreter_path_is_really_taken or test_unknown_kernel_mode"
  step bench_kernels 40 "$python" -m aef_hpc.cli bench kernels --cpu-smoke --out "$out/kernels.csv"
else
  workers=()
  "$python" -c 'import xdist' 2>/dev/null && workers=(-n 8)  # compiles dominate: spread them over processes
  step kernel_tests 150 "$python" -m pytest -q -p no:cacheprovider --device cuda ${workers[@]+"${workers[@]}"} \
    tests/test_kernels.py
  sizes='{"784": 784, "3x64x64": 3 * 64 * 64}'
  [ "${SIZES:-}" = all ] && sizes='None'
  step bench_kernels 150 "$python" -c "
from aef_hpc.bench import kernels as k
sizes = $sizes
rows = k.run('$out/kernels.csv', '$out/kernels.png', **({} if sizes is None else {'sizes': sizes}))
print(k.table(rows))"
fi

# bench train: the big nets with the fused kernels on (triton) and off (eager); on the CPU the small case, eager only
# (the interpreter's speed means nothing)
case_args='cases=("big",), modes=("eager",)'
modes='("triton", "eager")'
$smoke && case_args='cases=("small",), modes=("eager",), models=("aef-linear",), warmup=0, repeats=1, batch=4' \
  && modes='("eager",)'
step bench_train 90 "$python" -c "
from kernels import use_kernels
from aef_hpc.bench import train
for mode in $modes:
    with use_kernels(mode):
        print('kernels', mode)
        print(train.table(train.run('$out/train-kernels-' + mode + '.csv', $case_args)))"

limit_args=''
$smoke && limit_args='repeats=1, images=4, num_samples=4, models=("vae",)'
step bench_eval_vs_limit 60 "$python" -c "
from aef_hpc.bench import limit
print(limit.table(limit.run('$out/eval-vs-limit.csv', $limit_args)))"

# two training processes on this machine: DDP, then ZeRO-3; on one GPU (NCCL refuses two ranks on one device) gloo
backend=()
if ! $smoke && [ "$("$python" -c 'import torch; print(torch.cuda.device_count())')" -lt 2 ]; then
  backend=(AEF_HPC_BACKEND=gloo)
  note="one GPU: gloo, not NCCL"
fi
train_args=(--config configs/digits_aef_linear.yaml train.steps=2 train.val_every=2 train.log_every=1 eval.limit=16
  eval.num_samples=8 eval.repeats=1 eval.grid_samples=4 "train.device=$device" "run.out_dir=$out/runs" --no-progress)
for engine in ddp zero3; do
  extra=(engine=ddp)
  [ $engine = zero3 ] && extra=(engine=deepspeed deepspeed.config=configs/deepspeed/zero3.yaml)
  kept_note=$note
  step "train_2ranks_$engine" 60 env NPROC=2 ${backend[@]+"${backend[@]}"} launchers/local.sh "${train_args[@]}" \
    "${extra[@]}" "run.name=$engine"
  note=$kept_note
done
note=

echo "== summary ($out)"
printf '%s\n' "${status[@]}" | tee "$out/summary.txt"
! grep -q -v ': exit 0 in' "$out/summary.txt"
