r"""ActNorm: :math:`y = (x - b)/(e^{\ell} + 10^{-5})`, per channel (images) or one scalar (vectors).

:math:`\log|J| = -\frac{N}{C}\sum_c \log(e^{\ell_c} + 10^{-5})` with N the entries per sample. On the first
``forward`` in training mode, ``b`` and ``\ell`` are set from the batch (mean, log std) so the output is
normalised; the ``initialized`` buffer saves that state with the weights.
"""

import torch
from torch import nn

from ..kernels import acc_dtype
from .base import Bijection

EPS = 1e-5


class ActNorm(Bijection):
    """``num_channels=C`` normalises dim 1 of ``[B, C, ...]``; ``num_channels=1`` is one scalar pair."""

    def __init__(self, num_channels: int = 1):
        super().__init__()
        self.num_channels = num_channels
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _view(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.num_channels == 1:
            return p.reshape((1,) * x.dim())
        return p.reshape((1, -1) + (1,) * (x.dim() - 2))

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        if self.num_channels == 1:
            flat = x.reshape(1, -1)
        else:
            flat = x.transpose(0, 1).reshape(self.num_channels, -1)
        std = flat.std(dim=1, unbiased=False).clamp_min(1e-6) if flat.shape[1] > 1 else torch.ones_like(flat[:, 0])
        self.bias.copy_(flat.mean(dim=1))
        self.log_scale.copy_(std.log())
        self.initialized.fill_(True)

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        per_channel = x[0].numel() // self.num_channels
        log_scale = self.log_scale.to(acc_dtype(x))
        return (-per_channel * torch.log(log_scale.exp() + EPS).sum()).expand(x.shape[0])

    def forward(self, x):
        if self.training and not bool(self.initialized):
            self._initialize(x)
        scale = self._view(self.log_scale.exp() + EPS, x)
        return (x - self._view(self.bias, x)) / scale, self._logdet(x)

    def inverse(self, y):
        scale = self._view(self.log_scale.exp() + EPS, y)
        return y * scale + self._view(self.bias, y), -self._logdet(y)
