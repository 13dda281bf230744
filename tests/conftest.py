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
