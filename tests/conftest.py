"""Every test starts from seed 0 with float64 as the default dtype (math is checked in double precision).

``--device cuda`` runs the kernel tests on a GPU; on the CPU (the default) they run Triton's interpreter, which
must be switched on before ``triton`` is first imported, hence here, before any test module is collected.
"""

import os

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device of the kernel tests: cpu (Triton interpreter) or cuda")


def pytest_configure(config):
    if config.getoption("--device") == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture
def device(request):
    return torch.device(request.config.getoption("--device"))


@pytest.fixture(autouse=True)
def _float64_and_seed():
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def float32_default():
    """Training-style tests run in float32, like the CLI."""
    torch.set_default_dtype(torch.float32)


@pytest.fixture(scope="session")
def local_sweep(tmp_path_factory):
    """A real 2 configs x 2 seeds sweep, run here one after another (``aef-hpc sweep``; shared by the SLURM test,
    whose job array must reproduce it bit for bit). Under pytest-xdist the first worker to ask runs it in the
    folder all workers share, under a file lock; the others wait for it and read it (it is never modified)."""
    from filelock import FileLock
    from sweep_helpers import run_sweep, sweep_configs

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "sweep"
    said, failed = root / "sweep-stdout.txt", root / "sweep-failed.txt"
    with FileLock(str(root) + ".lock"):
        if not said.exists() and not failed.exists():
            root.mkdir(exist_ok=True)
            proc = run_sweep(sweep_configs(root), root / "local")
            if proc.returncode == 0:
                said.write_text(proc.stdout)
            else:
                failed.write_text(proc.stdout[-3000:] + proc.stderr[-3000:])
    if failed.exists():  # once, not again on every worker over a half-written folder
        pytest.fail(f"the shared sweep failed:\n{failed.read_text()}")
    return sorted(root.glob("*.yaml")), root / "local", said.read_text()
