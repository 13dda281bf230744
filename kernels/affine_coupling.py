r"""Affine coupling: :math:`y = x \odot e^{s} + t` with a bounded log-scale, and :math:`\log|J| = \sum s`.

The raw conditioner output is bounded by a soft clamp, :math:`s = c \tanh(s_{raw}/c)`, so one layer scales
by at most :math:`e^{\pm c}` (FrEIA's idea with tanh); ``clamp=None`` leaves it unbounded.

Triton: one program per row; the forward writes ``y`` and the row's log-det in one pass, the backward recomputes
``s`` from ``s_raw`` (nothing but the inputs is saved): ``gx = gy e^s``, ``gs = gy x e^s + g_logdet``,
``g_sraw = gs (1 - (s/c)^2)``, ``gt = gy`` (and the mirrored formulas for the inverse).
"""

import math

import torch
import triton
import triton.language as tl

from aef_hpc.errors import ModelError

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


def check_clamp(clamp: float | None) -> float | None:
    """``clamp`` must be ``None`` (no bound) or a positive finite number (0 would divide by zero)."""
    if clamp is not None and (isinstance(clamp, bool) or not 0 < clamp < math.inf):
        raise ModelError(f"clamp={clamp!r} must be a positive number, or None for an unbounded log-scale")
    return clamp


def bound_log_scale(s_raw: torch.Tensor, clamp: float | None) -> torch.Tensor:
    """Soft clamp of the log-scale into (-clamp, clamp); the identity for ``clamp=None``."""
    if check_clamp(clamp) is None:
        return s_raw
    return clamp * torch.tanh(s_raw / clamp)


def affine_coupling_reference(x, s_raw, t, clamp, inverse=False):
    s = bound_log_scale(s_raw, clamp)
    out = (x - t) * torch.exp(-s) if inverse else x * torch.exp(s) + t
    logdet = row_sum(s.expand(out.shape))  # every entry of the output scales, broadcast or not
    return out, -logdet if inverse else logdet


@triton.jit
def _bounded(u, clamp, HAS_CLAMP: tl.constexpr):
    if HAS_CLAMP:
        return clamp * (2.0 * tl.sigmoid(2.0 * u / clamp) - 1.0)
    return u


@triton.jit
def _coupling_fwd(
    x_ptr,
    s_ptr,
    t_ptr,
    out_ptr,
    logdet_ptr,
    n,
    x_rs,
    s_rs,
    t_rs,
    clamp,
    HAS_CLAMP: tl.constexpr,
    INVERSE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < n
    x = tl.load(x_ptr + row * x_rs + cols, mask=m, other=0.0).to(ACC)
    u = tl.load(s_ptr + row * s_rs + cols, mask=m, other=0.0).to(ACC)
    t = tl.load(t_ptr + row * t_rs + cols, mask=m, other=0.0).to(ACC)
    s = _bounded(u, clamp, HAS_CLAMP)
    if INVERSE:
        out = (x - t) * tl.exp(-s)
    else:
        out = x * tl.exp(s) + t
    tl.store(out_ptr + row * n + cols, out.to(out_ptr.dtype.element_ty), mask=m)
    store_row_partial(logdet_ptr, row, tl.where(m, s, 0.0), INVERSE)


@triton.jit
def _coupling_bwd(
    x_ptr,
    s_ptr,
    t_ptr,
    g_ptr,
    gld_ptr,
    gx_ptr,
    gs_ptr,
    gt_ptr,
    n,
    x_rs,
    s_rs,
    t_rs,
    clamp,
    HAS_CLAMP: tl.constexpr,
    INVERSE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    g_ld = tl.load(gld_ptr + row).to(ACC)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < n
    x = tl.load(x_ptr + row * x_rs + cols, mask=m, other=0.0).to(ACC)
    u = tl.load(s_ptr + row * s_rs + cols, mask=m, other=0.0).to(ACC)
    t = tl.load(t_ptr + row * t_rs + cols, mask=m, other=0.0).to(ACC)
    g = tl.load(g_ptr + row * n + cols, mask=m, other=0.0).to(ACC)
    s = _bounded(u, clamp, HAS_CLAMP)
    if INVERSE:
        scale = tl.exp(-s)
        gx = g * scale
        gs = -g * (x - t) * scale - g_ld
        gt = -gx
    else:
        scale = tl.exp(s)
        gx = g * scale
        gs = g * x * scale + g_ld
        gt = g
    if HAS_CLAMP:
        ratio = s / clamp
        gs = gs * (1.0 - ratio * ratio)
    tl.store(gx_ptr + row * n + cols, gx.to(gx_ptr.dtype.element_ty), mask=m)
    tl.store(gs_ptr + row * n + cols, gs.to(gs_ptr.dtype.element_ty), mask=m)
    tl.store(gt_ptr + row * n + cols, gt.to(gt_ptr.dtype.element_ty), mask=m)


class AffineCouplingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s_raw, t, clamp, inverse):
        rows = x.shape[0]
        (x2, s2, t2), (x_rs, s_rs, t_rs), n = flat_operands(rows, x, s_raw, t)
        out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
        grid, block = launch_grid(rows, n)
        partial = torch.empty(grid, dtype=acc_dtype(x), device=x.device)
        meta = dict(HAS_CLAMP=clamp is not None, INVERSE=inverse, ACC=compute_dtype(x.dtype), BLOCK=block)
        bound = 1.0 if clamp is None else clamp  # unused by the kernel without HAS_CLAMP
        _coupling_fwd[grid](x2, s2, t2, out, partial, n, x_rs, s_rs, t_rs, bound, **meta)
        triton_launches["affine_coupling"] += 1
        ctx.save_for_backward(x2, s2, t2)
        ctx.strides, ctx.meta, ctx.clamp, ctx.shapes = (x_rs, s_rs, t_rs), meta, clamp, (x.shape, s_raw.shape, t.shape)
        ctx.grid, ctx.full = grid, torch.broadcast_shapes(x.shape, s_raw.shape, t.shape)
        return out.view(ctx.full), partial.sum(1)

    @staticmethod
    def backward(ctx, g_out, g_logdet):
        bound = 1.0 if ctx.clamp is None else ctx.clamp
        grads = launch_backward(_coupling_bwd, "affine_coupling", ctx, g_out, g_logdet, bound)
        return (*grads, None, None)


def affine_coupling(x, s_raw, t, clamp: float | None = 2.0):
    """Density direction: ``(x * exp(s) + t, sum(s))`` with ``s = bound_log_scale(s_raw)``."""
    check_clamp(clamp)
    if wants_triton(x, s_raw, t):
        return AffineCouplingFunction.apply(x, s_raw, t, clamp, False)
    return affine_coupling_reference(x, s_raw, t, clamp)


def affine_coupling_inverse(y, s_raw, t, clamp: float | None = 2.0):
    """Sampling direction: ``((y - t) * exp(-s), -sum(s))``."""
    check_clamp(clamp)
    if wants_triton(y, s_raw, t):
        return AffineCouplingFunction.apply(y, s_raw, t, clamp, True)
    return affine_coupling_reference(y, s_raw, t, clamp, inverse=True)
