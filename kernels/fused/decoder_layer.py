r"""Triton math of the decoder layer: with ``a = softplus(r) + eps`` and ``delta = (y - mu) / a``,
``term = -delta^2 / 2 - log(2 pi) / 2 - log a``; backward, with ``g_delta = g - g_row delta`` (what reaches
``delta``): ``gy = g_delta / a``, ``g_mu = -gy``, ``g_r = -sigmoid(r) (g_delta delta + g_row) / a`` (autograd's
order of operations, so an infinite ``delta`` gives the reference's infinity, not inf - inf)."""

import triton
import triton.language as tl

from .rowwise import Op


@triton.jit
def _scale(r, eps):
    """``softplus(r) + eps = max(r, 0) + log1p(e^-|r|) + eps``, with log1p by Goldberg's trick
    (``log(u) e / (u - 1)``, ``u = 1 + e``): ``log(1 + e)`` alone loses all digits of ``e`` for ``r << 0``."""
    e = tl.exp(-tl.abs(r))
    u = 1.0 + e
    d = u - 1.0  # e as rounded into u; 0 where e vanished in it (then log1p(e) = e)
    return tl.maximum(r, 0.0) + tl.where(d == 0.0, e, tl.log(u) * (e / tl.where(d == 0.0, 1.0, d))) + eps


@triton.jit
def _forward(y, mu, r, eps, half_log_2pi, VARIANT: tl.constexpr):
    a = _scale(r, eps)
    delta = (y - mu) / a
    return delta, -0.5 * delta * delta - half_log_2pi - tl.log(a)


@triton.jit
def _backward(y, mu, r, g, g_row, eps, half_log_2pi, VARIANT: tl.constexpr):
    a = _scale(r, eps)
    delta = (y - mu) / a
    g_delta = g - g_row * delta
    gy = g_delta / a
    return gy, -gy, -tl.sigmoid(r) * (g_delta * delta + g_row) / a


OP = Op("decoder_layer", _forward, _backward)
