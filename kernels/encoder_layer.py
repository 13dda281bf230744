r"""AEF encoder affine layer: :math:`z = \mu + (\sigma + \epsilon)\odot c`, :math:`\log|J| = \sum\log(\sigma+\epsilon)`.

``mu`` and ``sigma`` come from the encoder network (sigma already positive); ``core`` is the core (partition
family), the expansion variable (expanded family) or the reparameterisation noise (VAE).

Triton, with ``a = sigma + eps``: forward ``g_mu = gz``, ``g_sigma = gz c + g_ld / a``, ``g_c = gz a``;
inverse ``c = (z - mu) / a``: ``g_z = gc / a``, ``g_mu = -g_z``, ``g_sigma = -(gc c + g_ld) / a``.
"""

import torch
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


def encoder_layer_reference(mu, sigma, v, eps: float, inverse: bool = False):
    scale = sigma + eps
    out = (v - mu) / scale if inverse else mu + scale * v
    logdet = row_sum(scale.log().expand(out.shape))  # every entry of the output scales, broadcast or not
    return out, -logdet if inverse else logdet


@triton.jit
def _encoder_fwd(
    mu_ptr,
    sig_ptr,
    v_ptr,
    out_ptr,
    ld_ptr,
    n,
    mu_rs,
    sig_rs,
    v_rs,
    eps,
    INVERSE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < n
    mu = tl.load(mu_ptr + row * mu_rs + cols, mask=inside, other=0.0).to(ACC)
    a = tl.load(sig_ptr + row * sig_rs + cols, mask=inside, other=1.0).to(ACC) + eps
    v = tl.load(v_ptr + row * v_rs + cols, mask=inside, other=0.0).to(ACC)
    if INVERSE:
        out = (v - mu) / a
    else:
        out = mu + a * v
    tl.store(out_ptr + row * n + cols, out.to(out_ptr.dtype.element_ty), mask=inside)
    store_row_partial(ld_ptr, row, tl.where(inside, tl.log(a), 0.0), INVERSE)


@triton.jit
def _encoder_bwd(
    mu_ptr,
    sig_ptr,
    v_ptr,
    g_ptr,
    gld_ptr,
    gmu_ptr,
    gsig_ptr,
    gv_ptr,
    n,
    mu_rs,
    sig_rs,
    v_rs,
    eps,
    INVERSE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    g_ld = tl.load(gld_ptr + row).to(ACC)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < n
    mu = tl.load(mu_ptr + row * mu_rs + cols, mask=inside, other=0.0).to(ACC)
    a = tl.load(sig_ptr + row * sig_rs + cols, mask=inside, other=1.0).to(ACC) + eps
    v = tl.load(v_ptr + row * v_rs + cols, mask=inside, other=0.0).to(ACC)
    g = tl.load(g_ptr + row * n + cols, mask=inside, other=0.0).to(ACC)
    if INVERSE:
        c = (v - mu) / a
        gv = g / a
        gmu = -gv
        gsig = -(g * c + g_ld) / a
    else:
        gmu = g
        gsig = g * v + g_ld / a
        gv = g * a
    tl.store(gmu_ptr + row * n + cols, gmu.to(gmu_ptr.dtype.element_ty), mask=inside)
    tl.store(gsig_ptr + row * n + cols, gsig.to(gsig_ptr.dtype.element_ty), mask=inside)
    tl.store(gv_ptr + row * n + cols, gv.to(gv_ptr.dtype.element_ty), mask=inside)


class EncoderLayerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, sigma, v, eps, inverse):
        rows = v.shape[0]
        flat, strides, n = flat_operands(rows, mu, sigma, v)
        out = torch.empty((rows, n), dtype=v.dtype, device=v.device)
        grid, block = launch_grid(rows, n)
        partial = torch.empty(grid, dtype=acc_dtype(v), device=v.device)
        meta = dict(INVERSE=inverse, ACC=compute_dtype(v.dtype), BLOCK=block)
        _encoder_fwd[grid](*flat, out, partial, n, *strides, eps, **meta)
        triton_launches["encoder_layer"] += 1
        ctx.save_for_backward(*flat)
        ctx.strides, ctx.meta, ctx.eps, ctx.grid = strides, meta, eps, grid
        ctx.shapes, ctx.full = (mu.shape, sigma.shape, v.shape), torch.broadcast_shapes(mu.shape, sigma.shape, v.shape)
        return out.view(ctx.full), partial.sum(1)

    @staticmethod
    def backward(ctx, g_out, g_logdet):
        return (*launch_backward(_encoder_bwd, "encoder_layer", ctx, g_out, g_logdet, ctx.eps), None, None)


def encoder_layer(mu, sigma, core, eps: float):
    """Density direction core -> latent: ``(mu + (sigma + eps) * core, sum log(sigma + eps))``."""
    if wants_triton(mu, sigma, core):
        return EncoderLayerFunction.apply(mu, sigma, core, eps, False)
    return encoder_layer_reference(mu, sigma, core, eps)


def encoder_layer_inverse(mu, sigma, z, eps: float):
    """Sampling direction latent -> core: ``((z - mu) / (sigma + eps), -sum log(sigma + eps))``."""
    if wants_triton(mu, sigma, z):
        return EncoderLayerFunction.apply(mu, sigma, z, eps, True)
    return encoder_layer_reference(mu, sigma, z, eps, inverse=True)
