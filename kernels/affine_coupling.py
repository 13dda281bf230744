r"""Affine coupling: :math:`y = x \odot e^{s} + t` with a bounded log-scale, and :math:`\log|J| = \sum s`.

The raw conditioner output is bounded by a soft clamp, :math:`s = c \tanh(s_{raw}/c)`, so one layer scales
by at most :math:`e^{\pm c}` (FrEIA's idea with tanh); ``clamp=None`` leaves it unbounded.
"""

import torch

from ._rows import row_sum


def bound_log_scale(s_raw: torch.Tensor, clamp: float | None) -> torch.Tensor:
    """Soft clamp of the log-scale into (-clamp, clamp); the identity for ``clamp=None``."""
    if clamp is None:
        return s_raw
    return clamp * torch.tanh(s_raw / clamp)


def affine_coupling(x, s_raw, t, clamp: float | None = 2.0):
    """Density direction: ``(x * exp(s) + t, sum(s))`` with ``s = bound_log_scale(s_raw)``."""
    s = bound_log_scale(s_raw, clamp)
    return x * torch.exp(s) + t, row_sum(s)


def affine_coupling_inverse(y, s_raw, t, clamp: float | None = 2.0):
    """Sampling direction: ``((y - t) * exp(-s), -sum(s))``."""
    s = bound_log_scale(s_raw, clamp)
    return (y - t) * torch.exp(-s), -row_sum(s)
