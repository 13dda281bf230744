"""Shared pytest options and fixtures: ``--device`` and ``--dtype`` (float64 by default, as zuko does)."""

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for model and kernel tests, e.g. cuda")
    parser.addoption("--dtype", default="float64", help="dtype for math checks (float64 or float32)")


@pytest.fixture
def device(request):
    return torch.device(request.config.getoption("--device"))


@pytest.fixture
def dtype(request):
    return getattr(torch, request.config.getoption("--dtype"))


@pytest.fixture(autouse=True)
def _defaults(request):
    """Seed 0 and the ``--dtype`` default dtype for every test (tests that train use ``float32_default``)."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, request.config.getoption("--dtype")))
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def float32_default():
    """Training-style tests run in float32, like the CLI."""
    torch.set_default_dtype(torch.float32)
