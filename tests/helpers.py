"""Test helpers: autograd-Jacobian checks of the bijection contract, weight randomisation, the console script."""

import shutil
import sys
from pathlib import Path

import torch


def aef_hpc_exe() -> str:
    """The ``aef-hpc`` console script of the environment running the tests."""
    return shutil.which("aef-hpc") or str(Path(sys.executable).with_name("aef-hpc"))


def randomize(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter so that zero- or identity-initialised layers do something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen).to(p))
    return module


def jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """``log|det J|`` of ``fn`` (one sample ``[1, ...] -> [1, n]``) at each row of ``x``, via autograd + slogdet."""
    out = []
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v.unsqueeze(0)).reshape(-1), row)
        jac = jac.reshape(jac.shape[0], -1)
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0, "singular Jacobian"
        out.append(logabs)
    return torch.stack(out)


def assert_bijection(module, x: torch.Tensor, atol: float = 1e-8) -> None:
    """The contract: round trip, ``forward`` log-det == slogdet of the autograd Jacobian, ``inverse`` gives -J."""
    y, logdet = module(x)
    assert logdet.shape == (x.shape[0],)
    x_back, inv_logdet = module.inverse(y)
    torch.testing.assert_close(x_back, x, atol=atol * 100, rtol=1e-6)
    torch.testing.assert_close(inv_logdet, -logdet, atol=atol, rtol=1e-7)
    expected = jacobian_logdet(lambda v: module(v)[0], x)
    torch.testing.assert_close(logdet, expected, atol=1e-6, rtol=1e-6)
