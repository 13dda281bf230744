r"""RealNVP affine coupling on ``[B, d]`` and the ``realnvp`` stack: one half conditions an affine map of the other.

:math:`y_b = x_b \odot e^{s(x_a)} + t(x_a)`, :math:`y_a = x_a`, with the bounded log-scale
:math:`s = c\tanh(s_{raw}/c)` and :math:`\log|J| = \sum s` (computed by ``aef_hpc.kernels``). Both directions
are one conditioner pass, so the stack is parallel for density and sampling alike.
"""

import torch
from torch import nn

from .. import kernels
from ..errors import ModelError
from .actnorm import ActNorm
from .base import Bijection, Composite


class ZeroLinear(nn.Linear):
    """A linear layer that starts at zero, set in its own ``__init__`` (under ZeRO-3's ``zero.Init`` a module's
    parameters are partitioned when its own ``__init__`` returns, so a parent's later change to them would be
    lost)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class AffineCoupling(Bijection):
    """Halves ``a = x[:, :d//2]``, ``b = x[:, d//2:]``; ``parity`` 0 maps ``b`` given ``a``, 1 maps ``a`` given ``b``.

    The conditioner is an MLP with ``num_blocks`` ReLU hidden layers of width ``hidden`` (0: affine in the
    conditioning half); its last layer starts at zero, so the layer starts as the identity.
    """

    def __init__(
        self, features: int, hidden: int = 64, parity: int = 0, clamp: float | None = 2.0, num_blocks: int = 2
    ):
        super().__init__()
        if features < 2:
            raise ModelError(f"affine coupling needs at least 2 features, got {features}")
        self.split = features // 2
        self.parity = parity % 2
        n_cond = features - self.split if self.parity else self.split
        widths = [n_cond] + [hidden] * num_blocks
        layers = []
        for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        self.net = nn.Sequential(*layers, ZeroLinear(widths[-1], 2 * (features - n_cond)))
        self.clamp = clamp

    def _halves(self, x):
        """``(conditioning, changed)`` halves of ``x``: column slices, no copy and no host synchronisation."""
        a, b = x[:, : self.split], x[:, self.split :]
        return (b, a) if self.parity else (a, b)

    def _merge(self, kept, changed):
        return torch.cat((changed, kept) if self.parity else (kept, changed), dim=1)

    def _couple(self, x, op):
        kept, free = self._halves(x)
        s_raw, t = self.net(kept).chunk(2, dim=1)
        changed, logdet = op(free, s_raw, t, self.clamp)
        return self._merge(kept, changed), logdet

    def forward(self, x):
        return self._couple(x, kernels.affine_coupling)

    def inverse(self, y):
        return self._couple(y, kernels.affine_coupling_inverse)


def coupling_stack(features: int, hidden: int = 256, num_layers: int = 4, num_blocks: int = 2) -> Composite:
    """``num_layers × [AffineCoupling(parity 0, 1, 0, …), ActNorm(1)]``: the ``realnvp`` flow kind."""
    if features < 2:
        raise ModelError(
            f"the realnvp flow needs at least 2 features (a coupling maps one half given the other), got {features}: "
            "use maf or none for a 1-dimensional latent"
        )
    layers = []
    for i in range(num_layers):
        layers += [AffineCoupling(features, hidden, parity=i, num_blocks=num_blocks), ActNorm(1)]
    return Composite(*layers)
