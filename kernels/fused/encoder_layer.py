r"""Triton math of the encoder layer, ``a = sigma + eps``. ``VARIANT`` 0: ``out = mu + a c``, ``term = log a``;
backward ``g_mu = g`` (returned as it is), ``g_sigma = g c + g_row / a``, ``g_c = g a``. ``VARIANT`` 1 (inverse):
``out = (z - mu) / a``, ``term = -log a``; ``g_z = g / a``, ``g_mu = -g_z``, ``g_sigma = -(g out + g_row) / a``."""

import triton
import triton.language as tl

from .rowwise import Op


@triton.jit
def _forward(mu, sigma, v, eps, unused, VARIANT: tl.constexpr):
    a = sigma + eps
    if VARIANT == 1:
        return (v - mu) / a, -tl.log(a)
    return mu + a * v, tl.log(a)


@triton.jit
def _backward(mu, sigma, v, g, g_row, eps, unused, VARIANT: tl.constexpr):
    a = sigma + eps
    if VARIANT == 1:
        gv = g / a
        return -gv, -(g * (v - mu) / a + g_row) / a, gv
    return g, g * v + g_row / a, g * a


OP = Op("encoder_layer", _forward, _backward)
