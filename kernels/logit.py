r"""Logit preprocessing (method.md §1.1), density direction :math:`x \in [0,1] \to u \in \mathbb R`.

:math:`s = \alpha + (1-2\alpha)x`, :math:`u = \mathrm{logit}(\mathrm{clamp}(s, 10^{-6}, 1-10^{-6}))`, and
:math:`\log|J| = D\log(1-2\alpha) + \sum_i \mathrm{softplus}(u_i) + \mathrm{softplus}(-u_i)`, where the sum equals
:math:`-\sum_i \log s_i(1-s_i)` for the clamped ``s``.

Triton (``fused/logit.py``): the squeeze, clamp, logit and the row's log-det in one pass, ``alpha`` and the clamp
compiled in as exact constants. The inverse (generation only) stays eager.
"""

import math

import torch
import torch.nn.functional as F

from ._rows import batch_shape, row_sum
from .dispatch import wants_triton

CLAMP = 1e-6


def _squeeze_logdet(t, alpha: float) -> float:
    """The affine squeeze's per-row log-det, ``D log(1 - 2 alpha)``."""
    return t[0].numel() * math.log(1 - 2 * alpha)


def _logit_logdet(u, alpha: float):
    """``log|J|`` per row of the density direction from its output: ``sum softplus(u) + softplus(-u)`` + squeeze."""
    return row_sum(F.softplus(u) + F.softplus(-u)) + _squeeze_logdet(u, alpha)


def logit_preprocess_reference(x, alpha: float):
    s = (alpha + (1 - 2 * alpha) * x).clamp(CLAMP, 1 - CLAMP)
    u = torch.log(s) - torch.log1p(-s)
    return u, _logit_logdet(u, alpha)


def logit_preprocess(x, alpha: float):
    """Return ``(u, logdet[B])`` for dequantized pixels ``x`` in [0, 1]."""
    batch_shape("logit", x)
    if wants_triton(x):
        from .fused.logit import OP
        from .fused.rowwise import rowwise

        u, logdet = rowwise(OP, (x,), (float(alpha), CLAMP))
        return u, logdet + _squeeze_logdet(x, alpha)
    return logit_preprocess_reference(x, alpha)


def logit_preprocess_inverse(u, alpha: float):
    """Return ``(x, -logdet[B])``: ``x = (sigmoid(u) - alpha) / (1 - 2 alpha)``, not clamped."""
    return (torch.sigmoid(u) - alpha) / (1 - 2 * alpha), -_logit_logdet(u, alpha)
