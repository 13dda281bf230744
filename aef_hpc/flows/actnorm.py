r"""ActNorm: :math:`y = (x - b)/(e^{\ell} + 10^{-5})`, per channel (images) or one scalar (vectors).

:math:`\log|J| = -\frac{N}{C}\sum_c \log(e^{\ell_c} + 10^{-5})` with N the entries per sample. It starts as the
identity and is set from data only by an explicit step: ``arm()`` makes the next pass, in whichever direction
data flows through it, set ``b`` and ``\ell`` so that pass's output has zero mean and unit (unbiased) standard
deviation per channel (``GenerativeAutoencoder.initialize(x)`` arms every ActNorm of a model and runs one
pass). A batch with (near) zero spread in a channel is refused. The ``initialized`` buffer saves the state.
"""

import torch
from torch import nn

from ..errors import DataError
from ..kernels import acc_dtype
from .base import Bijection

EPS = 1e-5
#: a channel whose standard deviation is at most this cannot set a scale (a constant batch): ten times EPS, below
#: which the scale ``e^l + EPS`` could not normalise it
MIN_SPREAD = 1e-4


class ActNorm(Bijection):
    """``num_channels=C`` normalises dim 1 of ``[B, C, ...]``; ``num_channels=1`` is one scalar pair."""

    def __init__(self, num_channels: int = 1):
        super().__init__()
        self.num_channels = num_channels
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))
        self._armed: str | None = None

    def arm(self, name: str = "ActNorm") -> None:
        """Set the parameters from the input of the next ``forward`` or ``inverse`` (``name`` is for errors)."""
        self._armed = name

    def disarm(self) -> None:
        self._armed = None

    def _view(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.num_channels == 1:
            return p.reshape((1,) * x.dim())
        return p.reshape((1, -1) + (1,) * (x.dim() - 2))

    @torch.no_grad()
    def _statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and unbiased std of ``x``; a channel without spread is a ``DataError``."""
        flat = x.reshape(1, -1) if self.num_channels == 1 else x.transpose(0, 1).reshape(self.num_channels, -1)
        flat = flat.to(acc_dtype(x))
        if flat.shape[1] < 2:
            raise DataError(f"cannot initialise {self._armed} from a single value per channel: use a larger batch")
        std = flat.std(dim=1)
        flat_channels = (std <= MIN_SPREAD).nonzero().flatten().tolist()
        if flat_channels:
            raise DataError(
                f"cannot initialise {self._armed} from this batch: channel {flat_channels[0]} has (near) zero spread "
                f"(std {std[flat_channels[0]].item():.3g}); initialise from a batch of varied real data"
            )
        return flat.mean(dim=1), std

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor, direction: str) -> None:
        mean, std = self._statistics(x)
        if direction == "forward":  # y = (x - b) / s: b = mean, s = std
            self.bias.copy_(mean)
            self.log_scale.copy_(std.log())
        else:  # x = y * s + b: s = 1 / std, b = -mean * s
            self.log_scale.copy_(-std.log())
            self.bias.copy_(-mean * (self.log_scale.exp() + EPS))
        self.initialized.fill_(True)
        self._armed = None

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        per_channel = x[0].numel() // self.num_channels
        log_scale = self.log_scale.to(acc_dtype(x))
        return (-per_channel * torch.log(log_scale.exp() + EPS).sum()).expand(x.shape[0])

    def forward(self, x):
        if self._armed:
            self._initialize(x, "forward")
        scale = self._view(self.log_scale.exp() + EPS, x)
        return (x - self._view(self.bias, x)) / scale, self._logdet(x)

    def inverse(self, y):
        if self._armed:
            self._initialize(y, "inverse")
        scale = self._view(self.log_scale.exp() + EPS, y)
        return y * scale + self._view(self.bias, y), -self._logdet(y)
