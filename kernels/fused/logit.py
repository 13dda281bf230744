r"""Triton math of the logit preprocessing, ``s = clamp(alpha + (1 - 2 alpha) x, lo, 1 - lo)`` (``CONST_A = alpha``,
``CONST_B = lo``): ``out = log s - log(1 - s)``, ``term = -log s - log(1 - s)``; backward
``gx = (1 - 2 alpha) (g + g_row (2s - 1)) / (s (1 - s))``, zero where clamped. A NaN pixel stays NaN
(comparisons, not ``minimum``/``maximum``, which drop NaN on a GPU)."""

import triton
import triton.language as tl

from .rowwise import Op


@triton.jit
def _squeezed(x, alpha, lo):
    s = alpha + (1.0 - 2.0 * alpha) * x
    return s, tl.where(s < lo, lo, tl.where(s > 1.0 - lo, 1.0 - lo, s))


@triton.jit
def _forward(x, unused_b, unused_c, alpha, lo, VARIANT: tl.constexpr):
    _, s = _squeezed(x, alpha, lo)
    log_s = tl.log(s)
    log_1ms = tl.log(1.0 - s)
    return log_s - log_1ms, -log_s - log_1ms


@triton.jit
def _backward(x, unused_b, unused_c, g, g_row, alpha, lo, VARIANT: tl.constexpr):
    raw, s = _squeezed(x, alpha, lo)
    gx = (1.0 - 2.0 * alpha) * (g + g_row * (2.0 * s - 1.0)) / (s * (1.0 - s))
    gx = tl.where((raw >= lo) & (raw <= 1.0 - lo), gx, 0.0)
    return gx, gx, gx


OP = Op("logit", _forward, _backward)
