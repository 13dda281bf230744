"""A real SLURM (Debian's slurm-wlm, started here as root: two emulated nodes on this host, see
scripts/slurm-local/) runs launchers/slurm.sbatch: torchrun per node, srun per rank, and SIGUSR1 -> checkpoint ->
requeue -> resume. Skipped, with the reason, where the daemons cannot start (not root, no packages)."""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from sweep_helpers import run_sweep

from aef_hpc.process_group import expand_nodelist
from aef_hpc.train.run_dir import read_metrics
from test_distributed import COMMON, ENGINES, ROOT, VENV_BIN, assert_same_losses, launch, train_losses

SCRIPTS = ROOT / "scripts" / "slurm-local"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("a local SLURM needs root (munged, slurmctld and slurmd are started by hand)")
    root = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_ROOT": str(root), "SLURM_CONF": str(root / "etc" / "slurm.conf"), "CRED_EXPIRE": "5"}
    start = subprocess.run(["bash", str(SCRIPTS / "start_slurm.sh"), "2"], env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    if start.returncode:
        subprocess.run(["bash", str(SCRIPTS / "stop_slurm.sh")], env=env, capture_output=True, timeout=60)
        pytest.skip(f"SLURM could not start here: {(start.stderr or start.stdout).strip().splitlines()[-1:]}")
    yield env
    subprocess.run(["bash", str(SCRIPTS / "stop_slurm.sh")], env=env, capture_output=True, timeout=60)


def submit(slurm, out: Path, *args: str, **env) -> str:
    proc = subprocess.run(
        ["sbatch", "--parsable", "--time=5", f"--output={out}/slurm-%j.out", "launchers/slurm.sbatch", *args],
        cwd=ROOT, env={**slurm, "VENV": str(VENV_BIN.parent), **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def wait_gone(slurm, job: str, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        queue = subprocess.run(["squeue", "-h", "-j", job], env=slurm, capture_output=True, text=True).stdout
        if not queue.strip():
            return
        time.sleep(0.5)
    pytest.fail(f"job {job} still queued or running after {timeout} s")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    runs = tmp_path_factory.mktemp("single")
    launch([str(VENV_BIN / "aef-hpc"), "train", *COMMON, "train.batch_size=32", "train.steps=100",
            "train.val_every=50", f"run.out_dir={runs}", "run.name=single"])  # fmt: skip
    return train_losses(runs / "single")


def test_the_node_list_parser_agrees_with_scontrol(slurm):
    for spec in ("n[01-03,07],gpu5", "c[9-11],d7", "n1"):
        out = subprocess.run(["scontrol", "show", "hostnames", spec], env=slurm, capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.split() and expand_nodelist(spec) == out.stdout.split()


@pytest.mark.parametrize("mode,engine", [("torchrun", "ddp"), ("srun", "zero3")])
def test_sbatch_on_two_nodes_trains_like_one_process(slurm, single, tmp_path, mode, engine):
    job = submit(slurm, tmp_path, *COMMON, *ENGINES[engine], "train.batch_size=16", f"run.out_dir={tmp_path}",
                 "run.name=r", MODE=mode)  # fmt: skip
    wait_gone(slurm, job)
    log = next(tmp_path.glob("slurm-*.out")).read_text()
    assert f"on n[1-2], mode {mode}, rendezvous 127.0.0.1:" in log, log[-2000:]
    assert_same_losses(tmp_path / "r", {s: v for s, v in single.items() if s <= 20})


def test_usr1_checkpoints_requeues_and_the_rerun_resumes(slurm, single, tmp_path):
    args = [*COMMON, *ENGINES["ddp"], "train.batch_size=16", "train.steps=100", "train.val_every=50"]
    job = submit(slurm, tmp_path, *args, f"run.out_dir={tmp_path}", "run.name=r")
    metrics = tmp_path / "r" / "metrics.csv"
    end = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) > 30) and time.monotonic() < end:
        time.sleep(0.2)
    signal = subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm, capture_output=True, text=True)
    assert signal.returncode == 0, signal.stderr
    wait_gone(slurm, job)
    log = next(tmp_path.glob("slurm-*.out")).read_text()
    assert "SIGUSR1" in log and "checkpoint requested" in log, log[-3000:]
    assert f"requeueing job {job} (1 of 20)" in log and "(restart 1)" in log, log[-3000:]
    stopped = int(log.split("checkpoint at step ")[1].split()[0])
    assert 0 < stopped < 100 and f"resuming {tmp_path / 'r'} from step-{stopped:06d}" in log
    meta = (tmp_path / "r" / "checkpoints" / "step-000100" / "meta.json").read_text()
    assert '"requeues": 1' in meta
    losses = train_losses(tmp_path / "r")
    assert sorted(losses) == list(range(1, 101))
    worst = max(abs(losses[s] - single[s]) / abs(single[s]) for s in losses)
    print(f"checkpointed at step {stopped} on SIGUSR1, requeued, resumed: worst relative difference {worst:.1e}")
    assert worst < 1e-4


def test_a_sweep_is_one_job_array_whose_preempted_task_is_requeued_and_matches_the_local_sweep(
    slurm, local_sweep, tmp_path
):
    configs, reference, _ = local_sweep
    out = tmp_path / "sweep"
    args = ["--executor", "slurm", "--sbatch-args=--nodes 1 --time 5"]
    submitted = run_sweep(configs, out, *args, env=slurm)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job = re.search(r"submitted job array (\d+) \(4 tasks\)", submitted.stdout).group(1)
    queued = run_sweep(configs, out, *args, env=slurm)  # queued or being trained: nothing is submitted twice
    assert queued.returncode == 0 and "nothing to run" in queued.stdout, queued.stdout + queued.stderr
    assert not re.search(r"\bnew\b", queued.stdout), queued.stdout
    metrics, end = out / "long-s1" / "metrics.csv", time.monotonic() + 180
    while not (metrics.exists() and len(metrics.read_text().splitlines()) > 40) and time.monotonic() < end:
        time.sleep(0.1)
    task = f"{job}_1"  # long-s1: the sweep's second run
    signal = subprocess.run(["scancel", "--signal=USR1", "--batch", task], env=slurm, capture_output=True, text=True)
    assert signal.returncode == 0, signal.stderr
    wait_gone(slurm, job)
    log = (out / "logs" / f"slurm-{task}.out").read_text()
    assert "checkpoint requested" in log and "requeueing job" in log and "(restart 1)" in log, log[-3000:]
    stopped = int(log.split("checkpoint at step ")[1].split()[0])
    assert 0 < stopped < 120, "preempted mid-run"
    for name in ("long-s0", "long-s1", "short-s0", "short-s1"):  # every task, the requeued one too: bit for bit
        assert train_rows(out / name) == train_rows(reference / name), name
        result = json.loads((out / name / "finished.json").read_text())
        assert result == {**json.loads((reference / name / "finished.json").read_text()), "evaluation": str(
            out / name / "eval" / Path(result["evaluation"]).name)}, name  # fmt: skip
    print(f"task {task} checkpointed at step {stopped} on SIGUSR1, requeued, resumed: every run bit-identical")
    again = run_sweep(configs, out, *args, env=slurm)
    assert again.returncode == 0 and "nothing to run: 4 already finished" in again.stdout, again.stdout


def train_rows(run_dir: Path) -> list[tuple[str, str, str]]:
    return [(r["step"], r["metric"], r["value"]) for r in read_metrics(run_dir) if r["split"] == "train"]
