"""The bijection contract, composition and inversion.

Every bijection is an ``nn.Module`` with ``forward(x) -> (y, logdet)`` in the *density* direction
(data -> noise) and ``inverse(y) -> (x, logdet)`` in the *sampling* direction. ``logdet`` is
``log|det dy/dx|`` per sample, shape ``[B]``. A subclass MUST return J from ``forward`` and -J from
``inverse`` at the same point (the nflows/FrEIA convention; enforced by ``tests/flows``).
"""

import torch
from torch import nn

from ..kernels import acc_dtype


def zero_logdet(x: torch.Tensor) -> torch.Tensor:
    """A ``[B]`` zero log-det in the accumulation dtype of ``x`` (float32 for bf16/fp16/fp32, float64 for float64)."""
    return torch.zeros(x.shape[0], dtype=acc_dtype(x), device=x.device)


class Bijection(nn.Module):
    """Base class: subclasses implement ``forward`` and ``inverse`` as described in the module doc."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


class Identity(Bijection):
    """``y = x`` with log-det 0 (the ``none`` flow)."""

    def forward(self, x):
        return x, zero_logdet(x)

    def inverse(self, y):
        return y, zero_logdet(y)


class Composite(Bijection):
    """``forward`` applies the parts in order and sums their log-dets; ``inverse`` runs them backwards."""

    def __init__(self, *parts: Bijection):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x):
        total = zero_logdet(x)
        for part in self.parts:
            x, logdet = part(x)
            total = total + logdet
        return x, total

    def inverse(self, y):
        total = zero_logdet(y)
        for part in reversed(self.parts):
            y, logdet = part.inverse(y)
            total = total + logdet
        return y, total


class Inverse(Bijection):
    """Swaps the two directions of a bijection (an MAF stack becomes an IAF stack)."""

    def __init__(self, inner: Bijection):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner.inverse(x)

    def inverse(self, y):
        return self.inner(y)
