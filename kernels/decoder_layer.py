r"""AEF decoder affine layer and Gaussian log-density in one op.

With :math:`\sigma = \mathrm{softplus}(r)` and deviations :math:`\delta = (y-\mu)/(\sigma+\epsilon)`, the
per-row output is :math:`\sum_{i\in\mathcal M} \log\mathcal N(\delta_i; 0, 1) - \log(\sigma_i+\epsilon)`,
which is both the decoder layer's density-direction log-det plus the base density of its output, and the
Gaussian log-likelihood :math:`\log\mathcal N(y; \mu, \sigma+\epsilon)` that a VAE uses.

Triton: one pass reads ``y, mu, r`` (and the mask) and writes ``delta`` and the row sum; the backward reads the
same inputs again instead of saved intermediates: with ``a = sigma + eps``,
``gy = m (g_delta - g_logp delta) / a``, ``g_mu = -gy``,
``g_r = m sigmoid(r) (g_logp (delta^2 - 1) - g_delta delta) / a``.
"""

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._rows import acc_dtype, row_sum
from .dispatch import (
    compute_dtype,
    flat_operands,
    launch_backward,
    launch_grid,
    store_row_partial,
    triton_launches,
    wants_triton,
)

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def decoder_layer_reference(y, mu, r, mask=None, eps: float = 1e-5):
    scale = F.softplus(r) + eps
    deviation = (y - mu) / scale
    terms = -0.5 * deviation.square() - _HALF_LOG_2PI - scale.log()
    if mask is not None:
        deviation = deviation * mask
        terms = terms * mask
    return deviation, row_sum(terms)


@triton.jit
def _softplus(r):
    return tl.maximum(r, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(r)))


@triton.jit
def _decoder_fwd(
    y_ptr,
    mu_ptr,
    r_ptr,
    m_ptr,
    dev_ptr,
    logp_ptr,
    n,
    y_rs,
    mu_rs,
    r_rs,
    m_rs,
    eps,
    half_log_2pi,
    HAS_MASK: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < n
    y = tl.load(y_ptr + row * y_rs + cols, mask=inside, other=0.0).to(ACC)
    mu = tl.load(mu_ptr + row * mu_rs + cols, mask=inside, other=0.0).to(ACC)
    r = tl.load(r_ptr + row * r_rs + cols, mask=inside, other=0.0).to(ACC)
    a = _softplus(r) + eps
    dev = (y - mu) / a
    term = -0.5 * dev * dev - half_log_2pi - tl.log(a)
    if HAS_MASK:
        w = tl.load(m_ptr + row * m_rs + cols, mask=inside, other=0.0).to(ACC)
        dev = dev * w
        term = term * w
    tl.store(dev_ptr + row * n + cols, dev.to(dev_ptr.dtype.element_ty), mask=inside)
    store_row_partial(logp_ptr, row, tl.where(inside, term, 0.0), False)


@triton.jit
def _decoder_bwd(
    y_ptr,
    mu_ptr,
    r_ptr,
    m_ptr,
    gdev_ptr,
    glogp_ptr,
    gy_ptr,
    gmu_ptr,
    gr_ptr,
    n,
    y_rs,
    mu_rs,
    r_rs,
    m_rs,
    eps,
    HAS_MASK: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    g_logp = tl.load(glogp_ptr + row).to(ACC)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < n
    y = tl.load(y_ptr + row * y_rs + cols, mask=inside, other=0.0).to(ACC)
    mu = tl.load(mu_ptr + row * mu_rs + cols, mask=inside, other=0.0).to(ACC)
    r = tl.load(r_ptr + row * r_rs + cols, mask=inside, other=0.0).to(ACC)
    g_dev = tl.load(gdev_ptr + row * n + cols, mask=inside, other=0.0).to(ACC)
    a = _softplus(r) + eps
    dev = (y - mu) / a
    gy = (g_dev - g_logp * dev) / a
    gr = tl.sigmoid(r) * (g_logp * (dev * dev - 1.0) - g_dev * dev) / a
    if HAS_MASK:
        w = tl.load(m_ptr + row * m_rs + cols, mask=inside, other=0.0).to(ACC)
        gy = gy * w
        gr = gr * w
    tl.store(gy_ptr + row * n + cols, gy.to(gy_ptr.dtype.element_ty), mask=inside)
    tl.store(gmu_ptr + row * n + cols, (-gy).to(gmu_ptr.dtype.element_ty), mask=inside)
    tl.store(gr_ptr + row * n + cols, gr.to(gr_ptr.dtype.element_ty), mask=inside)


class DecoderLayerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, mu, r, mask, eps):
        rows = y.shape[0]
        operands = (y, mu, r) if mask is None else (y, mu, r, mask.to(y.dtype))
        flat, strides, n = flat_operands(rows, *operands)
        if mask is None:
            flat, strides = [*flat, flat[0]], [*strides, 0]
        deviation = torch.empty((rows, n), dtype=y.dtype, device=y.device)
        grid, block = launch_grid(rows, n)
        partial = torch.empty(grid, dtype=acc_dtype(y), device=y.device)
        meta = dict(HAS_MASK=mask is not None, ACC=compute_dtype(y.dtype), BLOCK=block)
        _decoder_fwd[grid](*flat, deviation, partial, n, *strides, eps, _HALF_LOG_2PI, **meta)
        triton_launches["decoder_layer"] += 1
        ctx.save_for_backward(*flat)
        ctx.strides, ctx.meta, ctx.eps, ctx.shapes, ctx.grid = strides, meta, eps, (y.shape, mu.shape, r.shape), grid
        ctx.full = torch.broadcast_shapes(*(t.shape for t in operands))
        return deviation.view(ctx.full), partial.sum(1)

    @staticmethod
    def backward(ctx, g_dev, g_logp):
        return (*launch_backward(_decoder_bwd, "decoder_layer", ctx, g_dev, g_logp, ctx.eps), None, None)


def decoder_layer(y, mu, r, mask=None, eps: float = 1e-5):
    """Return ``(deviation, logp[B])``; ``mask`` (broadcastable, 1 = counted) zeroes the rest.

    Entries outside the mask get deviation 0 and add nothing to ``logp``.
    """
    if wants_triton(y, mu, r):
        return DecoderLayerFunction.apply(y, mu, r, mask, eps)
    return decoder_layer_reference(y, mu, r, mask, eps)


def softplus_inverse(sigma: float) -> float:
    """The pre-activation ``r`` with ``softplus(r) == sigma``."""
    return sigma + math.log(-math.expm1(-sigma))


def decoder_layer_inverse(deviation, mu, r, eps: float = 1e-5):
    """Sampling direction: ``y = mu + (softplus(r) + eps) * deviation`` (generation only; eager)."""
    return mu + (F.softplus(r) + eps) * deviation
