r"""Triton math of the affine coupling, ``s = c tanh(s_raw / c)`` for a clamp ``c > 0`` (``CONST_A``; 0: ``s = s_raw``).

``VARIANT`` 0: ``out = x e^s + t``, ``term = s``; backward ``gx = g e^s``, ``gs = g x e^s + g_row``, ``gt = g``
(returned as it is). ``VARIANT`` 1 (inverse): ``out = (y - t) e^{-s}``, ``term = -s``; ``gy = g e^{-s}``,
``gs = -g out - g_row``, ``gt = -gy``. Through the clamp ``g_sraw = gs (1 - (s/c)^2)``."""

import triton
import triton.language as tl

from .rowwise import Op


@triton.jit
def _bounded(u, clamp):
    if clamp > 0:
        return clamp * (2.0 * tl.sigmoid(2.0 * u / clamp) - 1.0)
    return u


@triton.jit
def _forward(x, s_raw, t, clamp, unused, VARIANT: tl.constexpr):
    s = _bounded(s_raw, clamp)
    if VARIANT == 1:
        return (x - t) * tl.exp(-s), -s
    return x * tl.exp(s) + t, s


@triton.jit
def _backward(x, s_raw, t, g, g_row, clamp, unused, VARIANT: tl.constexpr):
    s = _bounded(s_raw, clamp)
    if VARIANT == 1:
        scale = tl.exp(-s)
        gx = g * scale
        gs = -gx * (x - t) - g_row
        gt = -gx
    else:
        scale = tl.exp(s)
        gx = g * scale
        gs = gx * x + g_row
        gt = g
    if clamp > 0:
        ratio = s / clamp
        gs = gs * (1.0 - ratio * ratio)
    return gx, gs, gt


OP = Op("affine_coupling", _forward, _backward)
