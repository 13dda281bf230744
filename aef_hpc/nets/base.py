r"""Encoder and decoder contracts shared by every architecture.

An encoder maps an image ``[B, C, H, W]`` to ``(mu, sigma)`` of shape ``[B, d]`` with
:math:`\sigma = \mathrm{softplus}(\cdot)`. A decoder maps ``z [B, d]`` to ``(mu, r)`` of shape
``[B, C, H, W]`` where :math:`\sigma_D = \mathrm{softplus}(r)` (the decoder-layer op applies it), with the
variance ``fixed`` (:math:`\sigma_D \equiv 1`), ``independent`` (a learned per-pixel ``r``) or
``dependent`` (``r`` from a second set of output channels).
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..kernels import softplus_inverse

VARIANCES = ("fixed", "independent", "dependent")


class Encoder(nn.Module):
    """Subclasses implement ``heads(y) -> (mu, raw_sigma)``; ``forward`` applies the softplus."""

    def heads(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def forward(self, y):
        mu, raw = self.heads(y)
        return mu, F.softplus(raw)


class Decoder(nn.Module):
    """Subclasses implement ``trunk(z) -> [B, out_channels, H, W]`` with ``out_channels`` set here."""

    def __init__(self, image_shape: tuple[int, int, int], variance: str, independent_init: float):
        super().__init__()
        if variance not in VARIANCES:
            raise ModelError(f"decoder_variance={variance!r} is unknown: choose one of {', '.join(VARIANCES)}")
        self.image_shape = tuple(image_shape)
        self.variance = variance
        self.out_channels = image_shape[0] * (2 if variance == "dependent" else 1)
        if variance == "independent":
            self.raw_scale = nn.Parameter(torch.full(self.image_shape, float(independent_init)))
        elif variance == "fixed":
            self.register_buffer("raw_scale", torch.tensor(softplus_inverse(1.0)), persistent=False)

    def trunk(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, z):
        out = self.trunk(z)
        if self.variance == "dependent":
            mu, r = out.chunk(2, dim=1)
            return mu, r
        return out, self.raw_scale.to(out.dtype)  # broadcast over the batch by the decoder layer, not expanded
