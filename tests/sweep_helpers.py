"""The small sweep of the sweep tests: two configs (``long``: 120 steps, long enough to be interrupted mid-run;
``short``: 20 steps, another model), each with seeds 0 and 1, on the embedded digits."""

import os
import subprocess
from pathlib import Path

from helpers import aef_hpc_exe

COMMON = {"train": {"val_every": 60, "log_every": 1, "device": "cpu"},
          "eval": {"limit": 64, "grid_samples": 4, "num_samples": 8, "repeats": 1}}  # fmt: skip
CONFIGS = {
    "long": {"model": {"name": "aef-center"}, "train": {"steps": 120}},
    "short": {"model": {"name": "vae"}, "train": {"steps": 20, "val_every": 10}},
}
#: one thread everywhere: a run here and a run as a SLURM task add their floats in the same order
ENV = {"OMP_NUM_THREADS": "1"}


def sweep_configs(root: Path) -> list[Path]:
    from omegaconf import OmegaConf

    paths = []
    for name, own in CONFIGS.items():
        path = root / f"{name}.yaml"
        OmegaConf.save(OmegaConf.merge(COMMON, own), path)
        paths.append(path)
    return paths


def run_sweep(configs, out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [aef_hpc_exe(), "sweep", *map(str, configs), "--seeds", "0,1", "--out", str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **ENV, **(env or {})})  # fmt: skip
