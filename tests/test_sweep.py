"""``aef-hpc sweep`` here (the local executor; the SLURM job array is in test_slurm.py): every (config, seed) trained
once under ``<stem>-s<seed>``, a rerun skipping finished runs, resuming interrupted ones bit for bit and starting
over one killed before its first checkpoint; bad input one line with nothing written."""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
from helpers import aef_hpc_exe
from sweep_helpers import ENV, run_sweep

from aef_hpc.config import from_yaml
from aef_hpc.train.run_dir import read_metrics

NAMES = ["long-s0", "long-s1", "short-s0", "short-s1"]


def losses(run_dir):
    return [(r["step"], r["value"]) for r in read_metrics(run_dir) if r["split"] == "train" and r["metric"] != "lr"]


def finished(run_dir) -> dict:
    return json.loads((run_dir / "finished.json").read_text())


def test_every_config_and_seed_is_trained_once_and_a_rerun_skips_them(local_sweep):
    configs, out, said = local_sweep
    assert sorted(p.name for p in out.iterdir() if (p / "config.yaml").exists()) == NAMES
    for name in NAMES:
        cfg = from_yaml((out / name / "config.yaml").read_text())
        assert cfg.train.seed == int(name[-1]) and cfg.run.name == name
        assert cfg.model.name == ("aef-center" if name.startswith("long") else "vae")
        assert f"{name}: finished in" in said and finished(out / name)["best_step"] == cfg.train.steps
    assert "4 trained" in said
    assert losses(out / "long-s0") != losses(out / "long-s1"), "the seeds differ"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run_sweep(configs, out)
    assert again.returncode == 0 and "nothing to run: 4 already finished" in again.stdout, again.stderr
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}, "nothing written again"
    dry = run_sweep(configs, out, "--dry-run", "--executor", "slurm")
    assert dry.returncode == 0
    assert "sbatch --parsable --array=" not in dry.stdout, "nothing to submit: no sbatch line"
    more = subprocess.run([aef_hpc_exe(), "sweep", *map(str, configs), "--seeds", "0-2", "--out", str(out),
                           "--dry-run", "--executor", "slurm"], capture_output=True, text=True)  # fmt: skip
    assert more.returncode == 0 and "--array=2,5 " in more.stdout and re.search(r"long-s2 +new", more.stdout)
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}, "a dry run writes nothing"
    assert not (out / "long-s2").exists()


def test_ctrl_c_stops_at_a_checkpoint_and_the_rerun_resumes_bit_for_bit(local_sweep, tmp_path):
    configs, reference, _ = local_sweep
    command = [aef_hpc_exe(), "sweep", str(configs[0]), "--seeds", "1", "--out", str(tmp_path)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV})  # fmt: skip
    first, end = tmp_path / "long-s1" / "checkpoints" / "latest", time.monotonic() + 120
    while not first.exists() and time.monotonic() < end:  # its first checkpoint (step 60): mid-run from there on
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the sweep; it passes one on to the training it runs
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "long-s1 checkpointed where it stood; the same command resumes the sweep" in err, err
    assert not (tmp_path / "long-s1" / "finished.json").exists()
    stopped = int((tmp_path / "long-s1" / "checkpoints" / "latest").read_text().strip().split("-")[1])
    # where it stood: mostly past step 60; exactly 60 when the signal came between that checkpoint and step 61
    assert 60 <= stopped < 120
    log = (tmp_path / "logs" / "long-s1.log").read_text()
    assert f"stopped with a checkpoint at step {stopped};" in log, "the run was asked to checkpoint, not killed"
    again = run_sweep([configs[0]], tmp_path, "--seeds", "1")  # the helper's --seeds 0,1 would add long-s0: not here
    assert again.returncode == 0 and re.search(r"long-s1 +interrupted", again.stdout), again.stdout + again.stderr
    assert "1 resumed" in again.stdout and f"from step-{stopped:06d}" in (tmp_path / "logs" / "long-s1.log").read_text()
    assert losses(tmp_path / "long-s1") == losses(reference / "long-s1"), "resumed bit for bit"
    assert finished(tmp_path / "long-s1")["bits_per_dim"] == finished(reference / "long-s1")["bits_per_dim"]


def test_a_run_killed_before_its_first_checkpoint_is_started_over(local_sweep, tmp_path):
    configs, reference, _ = local_sweep
    (tmp_path / "short-s0").mkdir()  # what a SIGKILL before the first checkpoint leaves: its config, a partial log
    shutil.copy(reference / "short-s0" / "config.yaml", tmp_path / "short-s0")
    (tmp_path / "short-s0" / "metrics.csv").write_text("step,split,metric,value\n1,train,nll,1.0\n")
    done = subprocess.run([aef_hpc_exe(), "sweep", str(configs[1]), "--seeds", "0", "--out", str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ, **ENV})  # fmt: skip
    assert done.returncode == 0 and re.search(r"short-s0 +restart", done.stdout), done.stdout + done.stderr
    assert losses(tmp_path / "short-s0") == losses(reference / "short-s0")


@pytest.mark.parametrize(
    "args,match",
    [
        (["missing.yaml"], "missing.yaml does not exist"),
        (["{long}", "train.nosuch=1"], "train.nosuch"),
        (["{long}", "--seeds", "1,1"], "--seeds '1,1': give distinct seeds"),
        (["{long}", "--seeds", "a"], "--seeds 'a': write seeds as 0,1,2"),
        (["{long}", "--seeds", "0-99999999999"], "a sweep has at most 10,000 seeds"),
        (["{long}", "--seeds", "5-2"], "a range goes up"),
        (["{long}", "--executor", "slurm", "--sbatch-args=--comment 'x"], "No closing quotation"),
        (["{long}", "{copy}"], "would both name their runs long-s<seed>"),
        (["{long}", "--parallel", "0"], "--parallel 0 and --nproc 1 must be 1 to 1024"),
        (["--seeds", "0"], "give at least one config file"),
        (["{long}", "--executor", "slurm"], "sbatch is not on PATH"),
        (["{short}", "train.lr=0.01", "--out", "{done}"], "was trained with train.lr=0.001 but the sweep now gives"),
    ],
)
def test_bad_sweeps_are_one_line_and_write_nothing(local_sweep, tmp_path, args, match):
    configs, done, _ = local_sweep
    (tmp_path / "other").mkdir()
    names = {"long": configs[0], "short": configs[1], "done": done, "copy": shutil.copy(configs[0], tmp_path / "other")}
    args = [a.format(**names) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "new")]
    before = sorted(p for p in done.rglob("*"))
    proc = subprocess.run([aef_hpc_exe(), "sweep", *args, *out], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PATH": os.path.dirname(aef_hpc_exe())})  # fmt: skip
    assert proc.returncode == 2 and match in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "new").exists() and sorted(p for p in done.rglob("*")) == before
