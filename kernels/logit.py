r"""Logit preprocessing (method.md §1.1), density direction :math:`x \in [0,1] \to u \in \mathbb R`.

:math:`s = \alpha + (1-2\alpha)x`, :math:`u = \mathrm{logit}(\mathrm{clamp}(s, 10^{-6}, 1-10^{-6}))`, and
:math:`\log|J| = D\log(1-2\alpha) + \sum_i \mathrm{softplus}(u_i) + \mathrm{softplus}(-u_i)`, where the sum equals
:math:`-\sum_i \log s_i(1-s_i)` for the clamped ``s``.

Triton: the squeeze, clamp, logit and the row's log-det in one pass; the backward (zero where clamped) is
``gx = (1-2 alpha) (gu + g_ld (2s-1)) / (s(1-s))``. The inverse (generation only) stays eager.
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
    grad_for,
    launch_grid,
    store_row_partial,
    triton_launches,
    wants_triton,
)

CLAMP = 1e-6


def logit_preprocess_reference(x, alpha: float):
    s = (alpha + (1 - 2 * alpha) * x).clamp(CLAMP, 1 - CLAMP)
    u = torch.log(s) - torch.log1p(-s)
    per_row = x[0].numel() * math.log(1 - 2 * alpha)
    return u, row_sum(F.softplus(u) + F.softplus(-u)) + per_row


@triton.jit
def _logit_fwd(x_ptr, u_ptr, ld_ptr, n, x_rs, params_ptr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < n
    x = tl.load(x_ptr + row * x_rs + cols, mask=inside, other=0.5).to(ACC)
    a = tl.load(params_ptr)  # alpha and the clamp in the compute dtype (a float argument would be float32)
    lo = tl.load(params_ptr + 1)
    hi = 1.0 - lo
    s = a + (1.0 - 2.0 * a) * x
    s = tl.minimum(tl.maximum(s, lo), hi)
    log_s = tl.log(s)
    log_1ms = tl.log(1.0 - s)
    tl.store(u_ptr + row * n + cols, (log_s - log_1ms).to(u_ptr.dtype.element_ty), mask=inside)
    store_row_partial(ld_ptr, row, tl.where(inside, -log_s - log_1ms, 0.0), False)


@triton.jit
def _logit_bwd(x_ptr, gu_ptr, gld_ptr, gx_ptr, n, x_rs, params_ptr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    g_ld = tl.load(gld_ptr + row).to(ACC)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < n
    x = tl.load(x_ptr + row * x_rs + cols, mask=inside, other=0.5).to(ACC)
    g_u = tl.load(gu_ptr + row * n + cols, mask=inside, other=0.0).to(ACC)
    a = tl.load(params_ptr)
    lo = tl.load(params_ptr + 1)
    hi = 1.0 - lo
    s_raw = a + (1.0 - 2.0 * a) * x
    s = tl.minimum(tl.maximum(s_raw, lo), hi)
    gx = (1.0 - 2.0 * a) * (g_u + g_ld * (2.0 * s - 1.0)) / (s * (1.0 - s))
    gx = tl.where((s_raw >= lo) & (s_raw <= hi), gx, 0.0)
    tl.store(gx_ptr + row * n + cols, gx.to(gx_ptr.dtype.element_ty), mask=inside)


class LogitFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        rows = x.shape[0]
        (x2,), (x_rs,), n = flat_operands(rows, x)
        u = torch.empty((rows, n), dtype=x.dtype, device=x.device)
        grid, block = launch_grid(rows, n)
        partial = torch.empty(grid, dtype=acc_dtype(x), device=x.device)
        meta = dict(ACC=compute_dtype(x.dtype), BLOCK=block)
        params = torch.tensor([alpha, CLAMP], dtype=acc_dtype(x), device=x.device)
        _logit_fwd[grid](x2, u, partial, n, x_rs, params, **meta)
        triton_launches["logit"] += 1
        ctx.save_for_backward(x2, params)
        ctx.meta, ctx.shape, ctx.grid, ctx.x_rs = meta, x.shape, grid, x_rs
        return u.view(x.shape), partial.sum(1) + n * math.log(1 - 2 * alpha)

    @staticmethod
    def backward(ctx, g_u, g_logdet):
        x2, params = ctx.saved_tensors
        rows, n = g_u.shape[0], x2.shape[1]
        gx = torch.empty((rows, n), dtype=g_u.dtype, device=g_u.device)
        g2 = g_u.reshape(rows, n).contiguous()
        _logit_bwd[ctx.grid](x2, g2, g_logdet.contiguous(), gx, n, ctx.x_rs, params, **ctx.meta)
        triton_launches["logit_backward"] += 1
        return grad_for(gx, ctx.shape, ctx.shape), None


def logit_preprocess(x, alpha: float):
    """Return ``(u, logdet[B])`` for dequantized pixels ``x`` in [0, 1]."""
    if wants_triton(x):
        return LogitFunction.apply(x, alpha)
    return logit_preprocess_reference(x, alpha)


def logit_preprocess_inverse(u, alpha: float):
    """Return ``(x, -logdet[B])``: ``x = (sigmoid(u) - alpha) / (1 - 2 alpha)``, not clamped."""
    x = (torch.sigmoid(u) - alpha) / (1 - 2 * alpha)
    per_row = u[0].numel() * math.log(1 - 2 * alpha)
    return x, -(row_sum(F.softplus(u) + F.softplus(-u)) + per_row)
