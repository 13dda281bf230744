r"""Logit preprocessing (method.md §1.1), density direction :math:`x \in [0,1] \to u \in \mathbb R`.

:math:`s = \alpha + (1-2\alpha)x`, :math:`u = \mathrm{logit}(\mathrm{clamp}(s, 10^{-6}, 1-10^{-6}))`, and
:math:`\log|J| = D\log(1-2\alpha) + \sum_i \mathrm{softplus}(u_i) + \mathrm{softplus}(-u_i)`.
"""

import math

import torch
import torch.nn.functional as F

from ._rows import row_sum

CLAMP = 1e-6


def logit_preprocess(x, alpha: float):
    """Return ``(u, logdet[B])`` for dequantized pixels ``x`` in [0, 1]."""
    s = (alpha + (1 - 2 * alpha) * x).clamp(CLAMP, 1 - CLAMP)
    u = torch.log(s) - torch.log1p(-s)
    per_row = x[0].numel() * math.log(1 - 2 * alpha)
    return u, row_sum(F.softplus(u) + F.softplus(-u)) + per_row


def logit_preprocess_inverse(u, alpha: float):
    """Return ``(x, -logdet[B])``: ``x = (sigmoid(u) - alpha) / (1 - 2 alpha)``, not clamped."""
    x = (torch.sigmoid(u) - alpha) / (1 - 2 * alpha)
    per_row = u[0].numel() * math.log(1 - 2 * alpha)
    return x, -(row_sum(F.softplus(u) + F.softplus(-u)) + per_row)
