r"""RealNVP affine coupling on ``[B, d]``: the masked half conditions an affine map of the other half.

:math:`y_b = x_b \odot e^{s(x_a)} + t(x_a)`, :math:`y_a = x_a`, with the bounded log-scale
:math:`s = c\tanh(s_{raw}/c)` and :math:`\log|J| = \sum s` (computed by ``aef_hpc.kernels``).
"""

import torch
from torch import nn

from .. import kernels
from ..errors import ModelError
from .base import Bijection


class AffineCoupling(Bijection):
    """``parity`` picks which half (first ``d//2`` features, or the rest) conditions the other."""

    def __init__(self, features: int, hidden: int = 64, parity: int = 0, clamp: float | None = 2.0):
        super().__init__()
        if features < 2:
            raise ModelError(f"affine coupling needs at least 2 features, got {features}")
        cond = torch.zeros(features, dtype=torch.bool)
        half = features // 2
        cond[:half] = True
        if parity % 2:
            cond = ~cond
        self.register_buffer("cond", cond)
        self.clamp = clamp
        n_cond, n_free = int(cond.sum()), int((~cond).sum())
        self.net = nn.Sequential(
            nn.Linear(n_cond, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * n_free)
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _params(self, x_cond):
        s_raw, t = self.net(x_cond).chunk(2, dim=1)
        return s_raw, t

    def forward(self, x):
        s_raw, t = self._params(x[:, self.cond])
        y_free, logdet = kernels.affine_coupling(x[:, ~self.cond], s_raw, t, self.clamp)
        return self._merge(x[:, self.cond], y_free), logdet

    def inverse(self, y):
        s_raw, t = self._params(y[:, self.cond])
        x_free, logdet = kernels.affine_coupling_inverse(y[:, ~self.cond], s_raw, t, self.clamp)
        return self._merge(y[:, self.cond], x_free), logdet

    def _merge(self, kept, changed):
        out = kept.new_empty(kept.shape[0], self.cond.numel())
        out[:, self.cond] = kept
        out[:, ~self.cond] = changed
        return out
