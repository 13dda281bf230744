"""SIGUSR1 to a local training (no SLURM): a checkpoint at the next step boundary, exit status 75 (try again),
and ``--resume`` continues to the same losses as an uninterrupted run."""

import signal
import subprocess
import time

from helpers import aef_hpc_exe
from test_distributed import COMMON, ROOT, train_losses

ARGS = [*COMMON, "train.batch_size=32", "train.steps=200", "train.val_every=100"]


def test_sigusr1_checkpoints_and_resume_finishes_identically(tmp_path):
    proc = subprocess.Popen([aef_hpc_exe(), "train", *ARGS, f"run.out_dir={tmp_path}", "run.name=r"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics = tmp_path / "r" / "metrics.csv"
    end = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) > 20) and time.monotonic() < end:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "no requeue (not under SLURM): continue with --resume" in err
    stopped = int(err.split("checkpoint at step ")[1].split(";")[0])
    assert 0 < stopped < 100 and (tmp_path / "r" / "checkpoints" / f"step-{stopped:06d}" / "meta.json").exists()
    resumed = subprocess.run([aef_hpc_exe(), "train", "--resume", str(tmp_path / "r"), "--no-progress"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run([aef_hpc_exe(), "train", *ARGS, f"run.out_dir={tmp_path}", "run.name=whole"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    assert train_losses(tmp_path / "r") == train_losses(tmp_path / "whole")
