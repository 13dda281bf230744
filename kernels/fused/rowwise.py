r"""The one driver of every fused op: its operands as ``[rows, n]`` views, the launch of ``programs``' forward and
backward (configuration from ``tuning``), and the autograd Function around them.

Nothing but the inputs is saved; the backward recomputes from them. Minimum traffic on the model's loss path:

- an operand broadcast over the batch (a ``[C, H, W]`` scale, a mask) is read from one row (row stride 0);
- a row-strided view (``chunk`` of the channels) is read in place: only each row's entries must be contiguous;
- ``out`` is written only when asked for (``want_out``), and its gradient read only when one arrives
  (``set_materialize_grads(False)``);
- a gradient is computed only for inputs that need one (``ctx.needs_input_grad``); one that equals the incoming
  gradient is returned as it is (``passthrough``: a shift, which the backward then neither keeps nor reads); one
  of an operand broadcast over the batch is summed over the program's rows inside the kernel, leaving one partial
  row per program instead of a full-size gradient;
- the row sums are one partial per forward program of ``tuning.partial_width(n)`` columns (512 on a GPU), added
  up afterwards: a row that fits one program is written directly (one launch).

``tests/compile_kernels.py`` compiles every variant for sm_90 without a GPU. The fused ops have first derivatives
only: ``create_graph=True`` through one is an error.
"""

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton.language as tl

from aef_hpc.errors import ModelError

from .._rows import accumulation_dtype, batch_shape
from ..dispatch import triton_bytes, triton_launches
from . import tuning
from .operands import Rows, as_rows, nbytes
from .programs import NO_GRAD, PER_ENTRY, SUMMED_OVER_ROWS, backward_program, forward_program


@dataclass(frozen=True)
class Op:
    name: str
    forward: Callable
    backward: Callable


def _compute(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


class RowwiseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op, consts, variant, want_out, passthrough, mask, *operands):
        full = batch_shape(op.name, *operands, mask)
        rows, n = full[0], math.prod(full[1:])
        floats = [*operands] + ([mask] if mask is not None and mask.is_floating_point() else [])
        dtype = functools.reduce(torch.promote_types, [t.dtype for t in floats])
        acc = accumulation_dtype(dtype)
        views = [as_rows(t, full) for t in operands]
        weights = None if mask is None else as_rows(mask, full, dtype)
        meta = dict(
            MATH=op.forward,
            CONST_A=consts[0],
            CONST_B=consts[1],
            VARIANT=variant,
            OPERANDS=len(operands),
            UNREAD=0,
            HAS_MASK=mask is not None,
            WRITE_OUT=want_out,
            ACC=_compute(dtype),
        )
        padded = [*views, *[views[0]] * (3 - len(views))]
        mask_rows = weights or views[0]  # unread without HAS_MASK
        device = operands[0].device
        out = torch.empty((rows, n), dtype=dtype, device=device) if want_out else views[0].tensor

        def run(cfg: tuning.Config):
            chunks = -(-n // cfg.block)
            sums = torch.empty((rows, chunks), dtype=acc, device=device)
            forward_program[(-(-rows // cfg.rows), chunks)](
                *(v.tensor for v in padded),
                mask_rows.tensor,
                out,
                sums,
                rows,
                n,
                chunks,
                *(v.stride for v in padded),
                mask_rows.stride,
                ROWS=cfg.rows,
                BLOCK=cfg.block,
                num_warps=cfg.warps,
                **meta,
            )
            return sums

        key = lambda: tuning.tuning_key(op.name, "forward", meta, dtype, rows, n, False)  # noqa: E731
        sums = tuning.tuned_run(key, tuning.candidates("forward", rows, n, False), run, device)
        triton_launches[op.name] += 1
        loaded = views + ([weights] if weights else [])
        moved = sum(v.nbytes(rows, n) + v.copied for v in loaded) + nbytes(sums)
        moved += rows * n * out.element_size() if want_out else 0
        if sums.shape[1] == 1:
            row_sums = sums.view(rows)
        else:
            row_sums = sums.sum(1)
            moved += nbytes(sums) + nbytes(row_sums)
        triton_bytes[op.name] += moved

        ctx.set_materialize_grads(False)
        # an operand whose gradient is the incoming one (a shift) enters no other gradient: neither saved nor read
        kept = [None if i < len(passthrough) and passthrough[i] else v.tensor for i, v in enumerate(views)]
        ctx.save_for_backward(*kept, None if weights is None else weights.tensor)
        ctx.acc, ctx.dtype, ctx.op, ctx.meta, ctx.want_out = acc, dtype, op, meta, want_out
        ctx.passthrough = passthrough
        ctx.full, ctx.strides, ctx.reducible = full, [v.stride for v in views], [v.reducible for v in views]
        ctx.mask_stride = None if weights is None else weights.stride
        ctx.shapes, ctx.dtypes = [t.shape for t in operands], [t.dtype for t in operands]
        if want_out:
            return out.view(full), row_sums
        return row_sums

    @staticmethod
    def backward(ctx, *grads):
        if torch.is_grad_enabled():  # create_graph=True: the gradients would silently lack their own gradients
            raise ModelError(
                f"{ctx.op.name}: the fused Triton ops have no second derivative (create_graph=True): "
                "use kernels=eager for higher-order gradients"
            )
        g_out, g_row = grads if ctx.want_out else (None, grads[0])
        *tensors, mask_tensor = ctx.saved_tensors
        needs = ctx.needs_input_grad[6:]
        if g_out is None and g_row is None or not any(needs):
            return (None,) * (6 + len(tensors))
        full, op, acc = ctx.full, ctx.op, ctx.acc
        rows, n = full[0], math.prod(full[1:])
        device = g_out.device if g_row is None else g_row.device
        g_row = torch.zeros(rows, dtype=acc, device=device) if g_row is None else g_row.contiguous()
        passthrough = [*ctx.passthrough, *[False] * (len(tensors) - len(ctx.passthrough))]
        views = [
            Rows(g_row, 0) if same else Rows(t, s, r)  # a skipped operand: any pointer, never read
            for t, s, r, same in zip(tensors, ctx.strides, ctx.reducible, passthrough, strict=True)
        ]
        incoming = views[0] if g_out is None else as_rows(g_out, full)  # unread without HAS_GRAD_OUT
        mask_rows = views[0] if mask_tensor is None else Rows(mask_tensor, ctx.mask_stride)
        # 0: none (not needed, or the incoming gradient itself), 1: one per entry, 2: summed over the rows
        modes = [
            NO_GRAD if not need or same else SUMMED_OVER_ROWS if v.reducible else PER_ENTRY
            for v, need, same in zip(views, needs, passthrough, strict=True)
        ]
        modes += [NO_GRAD] * (3 - len(modes))
        padded = [*views, *[views[0]] * (3 - len(views))]
        meta = {k: v for k, v in ctx.meta.items() if k != "WRITE_OUT"}
        unread = sum(1 << i for i, same in enumerate(passthrough) if same)
        meta.update(MATH=op.backward, UNREAD=unread, HAS_GRAD_OUT=g_out is not None)
        meta.update(GRAD_A=modes[0], GRAD_B=modes[1], GRAD_C=modes[2])
        # one per entry in the input's dtype when it is the compute dtype's, else in the accumulation dtype
        stored = [d if d == ctx.dtype else acc for d in ctx.dtypes] + [acc] * (3 - len(ctx.dtypes))

        def run(cfg: tuning.Config):
            blocks = -(-rows // cfg.rows)
            out = [
                torch.empty((blocks if summed else rows, n), dtype=acc if summed else dtype, device=device)
                if mode
                else None
                for mode, dtype, summed in zip(modes, stored, [m == SUMMED_OVER_ROWS for m in modes], strict=True)
            ]
            backward_program[(blocks, -(-n // cfg.block))](
                *(v.tensor for v in padded),
                mask_rows.tensor,
                incoming.tensor,
                g_row,
                *(g_row if o is None else o for o in out),
                rows,
                n,
                *(v.stride for v in padded),
                mask_rows.stride,
                incoming.stride,
                ROWS=cfg.rows,
                BLOCK=cfg.block,
                num_warps=cfg.warps,
                **meta,
            )
            return out

        reduces = SUMMED_OVER_ROWS in modes
        key = lambda: tuning.tuning_key(op.name, "backward", meta, ctx.dtype, rows, n, reduces)  # noqa: E731
        out = tuning.tuned_run(key, tuning.candidates("backward", rows, n, reduces), run, device)
        triton_launches[f"{op.name}_backward"] += 1
        moved = sum(v.nbytes(rows, n) for v, same in zip(views, passthrough, strict=True) if not same)
        moved += nbytes(g_row) + (0 if g_out is None else incoming.nbytes(rows, n) + incoming.copied)
        moved += 0 if mask_tensor is None else mask_rows.nbytes(rows, n)
        result = []
        for i, (mode, grad) in enumerate(zip(modes[: len(views)], out, strict=False)):
            if not (needs[i] and (mode or passthrough[i] and g_out is not None)):
                result.append(None)
                continue
            if mode:
                moved += nbytes(grad)
            if mode == SUMMED_OVER_ROWS and grad.shape[0] > 1:  # the programs' partial rows, added up
                grad = grad.sum(0, keepdim=True)
                moved += nbytes(out[i]) + nbytes(grad)
            grad = g_out if not mode else grad.view(-1, *full[1:])
            shaped = grad.to(ctx.dtypes[i]).sum_to_size(ctx.shapes[i])
            if shaped.data_ptr() != grad.data_ptr():  # a conversion or a sum the kernel could not do
                moved += nbytes(grad) + nbytes(shaped)
            result.append(shaped)
        triton_bytes[f"{op.name}_backward"] += moved
        return (None,) * 6 + tuple(result)


def rowwise(op: Op, operands, consts=(0.0, 0.0), variant: int = 0, want_out=True, passthrough=(), mask=None):
    """Run ``op`` on ``operands`` (1 or 3 tensors broadcasting to ``[B, ...]``): ``(out, row sums [B])``, or
    only the row sums without ``want_out``. ``consts``: the op's ``CONST_A, CONST_B``; ``variant``: 0 the map, 1 its
    inverse; ``passthrough[i]``: the gradient of operand ``i`` is the incoming one (a shift)."""
    return RowwiseFunction.apply(op, tuple(consts), variant, want_out, tuple(passthrough), mask, *operands)
