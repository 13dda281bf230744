"""Likelihood units: bits per dimension from a per-sample NLL in nats."""

import math

import torch


def bits_per_dim(nll: torch.Tensor | float, num_dims: int, levels: int = 256):
    r""":math:`\mathrm{NLL}/(D\ln 2) + \log_2(\mathrm{levels})` for data dequantized as ``(x_int + u)/levels``.

    ``nll`` is the negative log-density of the [0,1]^D variable in nats; the ``log2(levels)`` term turns it
    into bits of the discrete ``levels``-valued pixels (256 for 8-bit images, 17 for the digits).
    """
    return nll / (num_dims * math.log(2)) + math.log2(levels)
