r"""Masked affine autoregressive layer and the MAF / IAF stacks of method.md §1.5.

Density direction of one layer (parallel): :math:`y_i = x_i\,a_i(x_{<i}) + b_i(x_{<i})` with
:math:`a = \mathrm{softplus}(\cdot) + 10^{-3}` (current nflows), :math:`\log|J| = \sum_i \log a_i`. Its
inverse takes ``d`` sequential MADE passes. An IAF is the inverse of the same stack: sampling is parallel.
"""

import torch
import torch.nn.functional as F

from ..kernels import row_sum
from .actnorm import ActNorm
from .base import Bijection, Composite
from .made import ResidualMADE
from .permutation import ReversePermutation

MIN_SCALE = 1e-3


class MaskedAffineAutoregressive(Bijection):
    """One MADE-conditioned elementwise affine layer on ``[B, d]``."""

    def __init__(self, features: int, hidden: int = 256, num_blocks: int = 2):
        super().__init__()
        self.made = ResidualMADE(features, hidden, num_blocks, outputs_per_feature=2)

    def _scale_shift(self, x):
        params = self.made(x)
        return F.softplus(params[..., 0]) + MIN_SCALE, params[..., 1]

    def forward(self, x):
        scale, shift = self._scale_shift(x)
        return x * scale + shift, row_sum(scale.log())

    def inverse(self, y):
        x = torch.zeros_like(y)
        for _ in range(y.shape[1]):
            scale, shift = self._scale_shift(x)
            x = (y - shift) / scale
        return x, -row_sum(scale.log())


def masked_autoregressive_stack(features: int, hidden: int = 256, num_layers: int = 4, num_blocks: int = 2):
    """``num_layers × [ReversePermutation, MaskedAffineAutoregressive, ActNorm(1)]``, parallel forward."""
    layers = []
    for _ in range(num_layers):
        layers += [ReversePermutation(), MaskedAffineAutoregressive(features, hidden, num_blocks), ActNorm(1)]
    return Composite(*layers)
