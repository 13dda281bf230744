r"""Affine coupling: :math:`y = x \odot e^{s} + t` with a bounded log-scale, and :math:`\log|J| = \sum s`.

The raw conditioner output is bounded by a soft clamp, :math:`s = c \tanh(s_{raw}/c)`, so one layer scales
by at most :math:`e^{\pm c}` (FrEIA's idea with tanh); ``clamp=None`` leaves it unbounded. Triton math and its
gradients: ``fused/affine_coupling.py`` (the backward recomputes ``s`` from ``s_raw``; nothing else is saved).
"""

import math

import torch

from aef_hpc.errors import ModelError

from ._rows import batch_shape, row_sum
from .dispatch import wants_triton


def check_clamp(clamp: float | None) -> float | None:
    """``clamp`` must be ``None`` (no bound) or a positive finite number (0 would divide by zero)."""
    if clamp is not None and (isinstance(clamp, bool) or not 0 < clamp < math.inf):
        raise ModelError(f"clamp={clamp!r} must be a positive number, or None for an unbounded log-scale")
    return clamp


def bound_log_scale(s_raw: torch.Tensor, clamp: float | None) -> torch.Tensor:
    """Soft clamp of the log-scale into (-clamp, clamp); the identity for ``clamp=None``."""
    if check_clamp(clamp) is None:
        return s_raw
    return clamp * torch.tanh(s_raw / clamp)


def affine_coupling_reference(x, s_raw, t, clamp, inverse=False):
    s = bound_log_scale(s_raw, clamp)
    out = (x - t) * torch.exp(-s) if inverse else x * torch.exp(s) + t
    logdet = row_sum(s.expand(out.shape))  # every entry of the output scales, broadcast or not
    return out, -logdet if inverse else logdet


def _fused(x, s_raw, t, clamp, inverse: bool):
    from .fused.affine_coupling import OP
    from .fused.rowwise import rowwise

    bound = 0.0 if clamp is None else float(clamp)  # 0: unbounded (a valid clamp is positive)
    # density direction: the gradient of t is the incoming one
    return rowwise(OP, (x, s_raw, t), (bound, 0.0), int(inverse), passthrough=(False, False, not inverse))


def affine_coupling(x, s_raw, t, clamp: float | None = 2.0):
    """Density direction: ``(x * exp(s) + t, sum(s))`` with ``s = bound_log_scale(s_raw)``."""
    check_clamp(clamp)
    batch_shape("affine_coupling", x, s_raw, t)
    if wants_triton(x, s_raw, t):
        return _fused(x, s_raw, t, clamp, False)
    return affine_coupling_reference(x, s_raw, t, clamp)


def affine_coupling_inverse(y, s_raw, t, clamp: float | None = 2.0):
    """Sampling direction: ``((y - t) * exp(-s), -sum(s))``."""
    check_clamp(clamp)
    batch_shape("affine_coupling_inverse", y, s_raw, t)
    if wants_triton(y, s_raw, t):
        return _fused(y, s_raw, t, clamp, True)
    return affine_coupling_reference(y, s_raw, t, clamp, inverse=True)
