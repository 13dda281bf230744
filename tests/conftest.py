"""Every test starts from seed 0 with float64 as the default dtype (math is checked in double precision)."""

import pytest
import torch


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
