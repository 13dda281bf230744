r"""The one Triton driver of every fused op: elementwise math over ``[rows, n]`` operands plus a sum per row.

An op supplies two ``@triton.jit`` functions of up to three operands ``a, b, c`` and float constants ``K0, K1``
(``constexpr``: they stay exact in float64, a float argument would be float32) and a ``FLAG``:

- ``forward(a, b, c, K0, K1, FLAG) -> (out, term)``: the elementwise output and the term summed per row;
- ``backward(a, b, c, g, g_row, K0, K1, FLAG) -> (ga, gb, gc)``: the gradients of
  :math:`\sum_i g_i\,\mathrm{out}_i + g_{row} \sum_i \mathrm{term}_i` (``g`` is 0 when ``out`` has no gradient).

Nothing but the inputs is saved; the backward recomputes from them. Minimum traffic on the model's loss path:

- an operand broadcast over the batch (a ``[C, H, W]`` scale, a mask) is read from one row (row stride 0);
- a row-strided view (``chunk`` of the channels) is read in place: only each row's entries must be contiguous;
- ``out`` is written only when asked for (``want_out``), and its gradient read only when one arrives
  (``set_materialize_grads(False)``);
- a gradient is computed only for inputs that need one (``ctx.needs_input_grad``); one that equals the incoming
  gradient is returned as it is (``identity``: a shift, which the backward then neither keeps nor reads); one of
  an operand broadcast over the batch is summed over the program's rows inside the kernel, leaving one partial
  row per program instead of a full-size gradient;
- when a row fits one program its sum is written directly (one launch, no second reduction).

A program covers ``ROWS`` rows × ``BLOCK`` columns; on a GPU the configuration is tuned per row length (the
fastest of a few candidates, timed once per shape class and cached), the interpreter uses one wide chunk.
``tests/compile_kernels.py`` compiles every variant for sm_90 without a GPU. The fused ops have first
derivatives only: ``create_graph=True`` through one is an error.
"""

import functools
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from aef_hpc.errors import ModelError

from .._rows import accumulation_dtype, batch_shape
from ..dispatch import interpreting, triton_bytes, triton_launches

#: widest chunk and most rows one program takes under the interpreter (~2 ms per program: few, wide programs)
INTERPRETER = {"block": 8192, "rows": 64}
#: candidates on a GPU: chunk widths and warps; rows per program from the number of programs the grid needs
GPU_BLOCKS = (512, 1024, 2048)
GPU_WARPS = (4, 8)
TUNE_REPEATS = 5


@dataclass(frozen=True)
class Config:
    block: int
    rows: int
    warps: int = 4


@dataclass(frozen=True)
class Op:
    name: str
    forward: Callable
    backward: Callable


@triton.jit
def _load(
    a_ptr, b_ptr, c_ptr, row, a_rs, b_rs, c_rs, cols, live, INPUTS: tl.constexpr, SKIP: tl.constexpr, ACC: tl.constexpr
):
    """One row's chunk of each operand in the compute dtype (a one-operand op gets ``a`` three times); the
    operands in the bitmask ``SKIP`` (1: a, 2: b, 4: c) are not read: zeros."""
    a = tl.zeros(cols.shape, ACC) if SKIP & 1 else tl.load(a_ptr + row * a_rs + cols, mask=live, other=0.5).to(ACC)
    if INPUTS == 1:
        return a, a, a
    b = tl.zeros(cols.shape, ACC) if SKIP & 2 else tl.load(b_ptr + row * b_rs + cols, mask=live, other=1.0).to(ACC)
    c = tl.zeros(cols.shape, ACC) if SKIP & 4 else tl.load(c_ptr + row * c_rs + cols, mask=live, other=0.0).to(ACC)
    return a, b, c


@triton.jit
def _forward(
    a_ptr,
    b_ptr,
    c_ptr,
    m_ptr,
    out_ptr,
    sum_ptr,
    rows,
    n,
    chunks,
    a_rs,
    b_rs,
    c_rs,
    m_rs,
    MATH: tl.constexpr,
    K0: tl.constexpr,
    K1: tl.constexpr,
    FLAG: tl.constexpr,
    INPUTS: tl.constexpr,
    SKIP: tl.constexpr,
    HAS_MASK: tl.constexpr,
    WRITE_OUT: tl.constexpr,
    ACC: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    chunk = tl.program_id(1)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    inside = cols < n
    first = tl.program_id(0).to(tl.int64) * ROWS
    for i in range(ROWS):
        row = first + i
        live = inside & (row < rows)
        a, b, c = _load(a_ptr, b_ptr, c_ptr, row, a_rs, b_rs, c_rs, cols, live, INPUTS, SKIP, ACC)
        out, term = MATH(a, b, c, K0, K1, FLAG)
        if HAS_MASK:
            w = tl.load(m_ptr + row * m_rs + cols, mask=live, other=0.0).to(ACC)
            out = out * w
            term = term * w
        if WRITE_OUT:
            tl.store(out_ptr + row * n + cols, out.to(out_ptr.dtype.element_ty), mask=live)
        tl.store(sum_ptr + row * chunks + chunk, tl.sum(tl.where(live, term, 0.0), axis=0), mask=row < rows)


@triton.jit
def _backward(
    a_ptr,
    b_ptr,
    c_ptr,
    m_ptr,
    g_ptr,
    grow_ptr,
    ga_ptr,
    gb_ptr,
    gc_ptr,
    rows,
    n,
    a_rs,
    b_rs,
    c_rs,
    m_rs,
    g_rs,
    MATH: tl.constexpr,
    K0: tl.constexpr,
    K1: tl.constexpr,
    FLAG: tl.constexpr,
    INPUTS: tl.constexpr,
    SKIP: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_G: tl.constexpr,
    GA: tl.constexpr,
    GB: tl.constexpr,
    GC: tl.constexpr,
    ACC: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``GA, GB, GC``: 0 no gradient, 1 one per entry, 2 summed over this program's rows (broadcast operand)."""
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < n
    block_row = tl.program_id(0).to(tl.int64)
    first = block_row * ROWS
    sum_a = tl.zeros((BLOCK,), dtype=ACC)
    sum_b = tl.zeros((BLOCK,), dtype=ACC)
    sum_c = tl.zeros((BLOCK,), dtype=ACC)
    for i in range(ROWS):
        row = first + i
        live = inside & (row < rows)
        a, b, c = _load(a_ptr, b_ptr, c_ptr, row, a_rs, b_rs, c_rs, cols, live, INPUTS, SKIP, ACC)
        g_row = tl.load(grow_ptr + row, mask=row < rows, other=0.0).to(ACC)
        if HAS_G:
            g = tl.load(g_ptr + row * g_rs + cols, mask=live, other=0.0).to(ACC)
        else:
            g = tl.zeros((BLOCK,), dtype=ACC)
        if HAS_MASK:
            w = tl.load(m_ptr + row * m_rs + cols, mask=live, other=0.0).to(ACC)
            g = g * w
            g_row = g_row * w
        ga, gb, gc = MATH(a, b, c, g, g_row, K0, K1, FLAG)
        if GA == 1:
            tl.store(ga_ptr + row * n + cols, ga.to(ga_ptr.dtype.element_ty), mask=live)
        if GA == 2:
            sum_a += tl.where(live, ga, 0.0)
        if GB == 1:
            tl.store(gb_ptr + row * n + cols, gb.to(gb_ptr.dtype.element_ty), mask=live)
        if GB == 2:
            sum_b += tl.where(live, gb, 0.0)
        if GC == 1:
            tl.store(gc_ptr + row * n + cols, gc.to(gc_ptr.dtype.element_ty), mask=live)
        if GC == 2:
            sum_c += tl.where(live, gc, 0.0)
    if GA == 2:
        tl.store(ga_ptr + block_row * n + cols, sum_a, mask=inside)
    if GB == 2:
        tl.store(gb_ptr + block_row * n + cols, sum_b, mask=inside)
    if GC == 2:
        tl.store(gc_ptr + block_row * n + cols, sum_c, mask=inside)


# -- operands ----------------------------------------------------------------------------------------------------
@dataclass
class Rows:
    """An operand as ``[rows, n]`` in memory: entry ``(row, i)`` at ``tensor + row * stride + i``."""

    tensor: torch.Tensor
    stride: int
    reducible: bool = False  # broadcast over the batch by its shape: its gradient is one row summed over the rows
    copied: int = 0  # bytes read and written to make ``tensor`` (0: a view of the operand)

    def nbytes(self, rows: int, n: int) -> int:
        return (rows if self.stride else 1) * n * self.tensor.element_size()


def as_rows(t: torch.Tensor, full: torch.Size, dtype: torch.dtype | None = None) -> Rows:
    """``t`` broadcast to ``full`` (in ``dtype``, if given) without copying when its rows are contiguous (any row
    stride) or shared by every row; otherwise the least copy, counted in ``copied``."""
    rows, n = full[0], math.prod(full[1:])
    e = t.expand(full) if dtype is None or t.dtype == dtype else t.to(dtype).expand(full)
    copied = 0 if e.dtype == t.dtype else t.numel() * (t.element_size() + e.element_size())
    reducible = rows > 1 and (t.dim() < len(full) or t.shape[0] == 1)
    if rows > 1 and e.stride(0) == 0:
        row = e[0]
        if not row.is_contiguous():  # broadcast inside the row too (a [C, 1, 1] scale): one row is made
            row = row.contiguous()
            copied += n * e.element_size()
        return Rows(row, 0, reducible, copied)
    if e[0].is_contiguous():
        return Rows(e, e.stride(0) if rows > 1 else n, reducible, copied)
    return Rows(e.reshape(rows, n).contiguous(), n, reducible, copied + 2 * rows * n * e.element_size())


# -- configurations ----------------------------------------------------------------------------------------------
_tuned: dict[tuple, Config] = {}


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def candidates(rows: int, n: int, reduces: bool) -> list[Config]:
    """Configurations worth timing. Rows per program: 1 (many programs) unless a gradient is summed over the
    rows, where 16 rows per program keep the partial sums at 1/16 of a full gradient."""
    if interpreting():
        block = max(16, min(INTERPRETER["block"], _pow2(n)))
        return [Config(block, max(1, min(rows, INTERPRETER["rows"])))]
    per_program = min(16, _pow2(rows)) if reduces else 1
    blocks = [b for b in GPU_BLOCKS if b <= max(GPU_BLOCKS[0], _pow2(n))]
    return [Config(b, per_program, w) for b in blocks for w in GPU_WARPS]


def tuning_key(op: Op, direction: str, meta: dict, dtype: torch.dtype, rows: int, n: int, reduces: bool) -> tuple:
    """What the best configuration depends on: the kernel and its compile-time flags, the dtype, the row length
    and, where a gradient is summed over rows (the candidates depend on it), the number of rows."""
    flags = tuple(sorted((k, v) for k, v in meta.items() if k not in ("MATH", "ACC")))
    return op.name, direction, flags, dtype, _pow2(n), _pow2(rows) if reduces else 0


def _time_ms(launch: Callable[[], None]) -> float:
    """Mean milliseconds of a launch on the current device (the caller makes it the operands')."""
    launch()  # compiles
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(TUNE_REPEATS):
        launch()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / TUNE_REPEATS


def choose(key: tuple, options: list[Config], run: Callable[[Config], object], timer=_time_ms) -> Config:
    """The fastest of ``options`` for ``key`` (timed once, then cached); a single option is taken as it is."""
    if len(options) == 1:
        return options[0]
    if key not in _tuned:
        _tuned[key] = min(options, key=lambda cfg: timer(lambda: run(cfg)))
    return _tuned[key]


def tuned_configs() -> dict[tuple, Config]:
    """What tuning chose so far (for the benchmark's report)."""
    return dict(_tuned)


def _tuned_run(key: tuple, options: list[Config], run: Callable[[Config], object], device: torch.device):
    """Choose (timing on the operands' device: Triton launches on the current one, so ``cuda:1`` works) and run."""
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        return run(choose(key, options, run))


def _compute(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# -- autograd ----------------------------------------------------------------------------------------------------
class RowwiseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op, consts, flag, want_out, identity, mask, *operands):
        full = batch_shape(op.name, *operands, mask)
        rows, n = full[0], math.prod(full[1:])
        floats = [*operands] + ([mask] if mask is not None and mask.is_floating_point() else [])
        dtype = functools.reduce(torch.promote_types, [t.dtype for t in floats])
        acc = accumulation_dtype(dtype)
        views = [as_rows(t, full) for t in operands]
        weights = None if mask is None else as_rows(mask, full, dtype)
        meta = dict(
            MATH=op.forward,
            K0=consts[0],
            K1=consts[1],
            FLAG=flag,
            INPUTS=len(operands),
            SKIP=0,
            HAS_MASK=mask is not None,
            WRITE_OUT=want_out,
            ACC=_compute(dtype),
        )
        padded = [*views, *[views[0]] * (3 - len(views))]
        mask_rows = weights or views[0]  # unread without HAS_MASK
        device = operands[0].device
        out = torch.empty((rows, n), dtype=dtype, device=device) if want_out else views[0].tensor

        def run(cfg: Config):
            chunks = -(-n // cfg.block)
            sums = torch.empty((rows, chunks), dtype=acc, device=device)
            _forward[(-(-rows // cfg.rows), chunks)](
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

        key = tuning_key(op, "forward", meta, dtype, rows, n, False)
        sums = _tuned_run(key, candidates(rows, n, False), run, device)
        triton_launches[op.name] += 1
        loaded = views + ([weights] if weights else [])
        moved = sum(v.nbytes(rows, n) + v.copied for v in loaded) + _nbytes(sums)
        moved += rows * n * out.element_size() if want_out else 0
        if sums.shape[1] == 1:
            row_sums = sums.view(rows)
        else:
            row_sums = sums.sum(1)
            moved += _nbytes(sums) + _nbytes(row_sums)
        triton_bytes[op.name] += moved

        ctx.set_materialize_grads(False)
        # an operand whose gradient is the incoming one (a shift) enters no other gradient: neither saved nor read
        kept = [None if i < len(identity) and identity[i] else v.tensor for i, v in enumerate(views)]
        ctx.save_for_backward(*kept, None if weights is None else weights.tensor)
        ctx.acc, ctx.dtype, ctx.op, ctx.meta, ctx.want_out, ctx.identity = acc, dtype, op, meta, want_out, identity
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
        identity = [*ctx.identity, *[False] * (len(tensors) - len(ctx.identity))]
        views = [
            Rows(g_row, 0) if same else Rows(t, s, r)  # a skipped operand: any pointer, never read
            for t, s, r, same in zip(tensors, ctx.strides, ctx.reducible, identity, strict=True)
        ]
        incoming = views[0] if g_out is None else as_rows(g_out, full)  # unread without HAS_G
        mask_rows = views[0] if mask_tensor is None else Rows(mask_tensor, ctx.mask_stride)
        # 0: none (not needed, or the incoming gradient itself), 1: one per entry, 2: summed over the rows
        modes = [
            0 if not need or same else 2 if v.reducible else 1
            for v, need, same in zip(views, needs, identity, strict=True)
        ]
        modes += [0] * (3 - len(modes))
        padded = [*views, *[views[0]] * (3 - len(views))]
        meta = {k: v for k, v in ctx.meta.items() if k != "WRITE_OUT"}
        skip = sum(1 << i for i, same in enumerate(identity) if same)
        meta.update(MATH=op.backward, SKIP=skip, HAS_G=g_out is not None, GA=modes[0], GB=modes[1], GC=modes[2])
        # one per entry in the input's dtype when it is the compute dtype's, else in the accumulation dtype
        stored = [d if d == ctx.dtype else acc for d in ctx.dtypes] + [acc] * (3 - len(ctx.dtypes))

        def run(cfg: Config):
            blocks = -(-rows // cfg.rows)
            out = [
                torch.empty((blocks if mode == 2 else rows, n), dtype=acc if mode == 2 else dtype, device=device)
                if mode
                else None
                for mode, dtype in zip(modes, stored, strict=True)
            ]
            _backward[(blocks, -(-n // cfg.block))](
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

        key = tuning_key(op, "backward", meta, ctx.dtype, rows, n, 2 in modes)
        out = _tuned_run(key, candidates(rows, n, 2 in modes), run, device)
        triton_launches[f"{op.name}_backward"] += 1
        moved = sum(v.nbytes(rows, n) for v, same in zip(views, identity, strict=True) if not same)
        moved += _nbytes(g_row) + (0 if g_out is None else incoming.nbytes(rows, n) + incoming.copied)
        moved += 0 if mask_tensor is None else mask_rows.nbytes(rows, n)
        result = []
        for i, (mode, grad) in enumerate(zip(modes[: len(views)], out, strict=False)):
            if not (needs[i] and (mode or identity[i] and g_out is not None)):
                result.append(None)
                continue
            if mode:
                moved += _nbytes(grad)
            if mode == 2 and grad.shape[0] > 1:  # the programs' partial rows, added up
                grad = grad.sum(0, keepdim=True)
                moved += _nbytes(out[i]) + _nbytes(grad)
            grad = g_out if not mode else grad.view(-1, *full[1:])
            shaped = grad.to(ctx.dtypes[i]).sum_to_size(ctx.shapes[i])
            if shaped.data_ptr() != grad.data_ptr():  # a conversion or a sum the kernel could not do
                moved += _nbytes(grad) + _nbytes(shaped)
            result.append(shaped)
        triton_bytes[f"{op.name}_backward"] += moved
        return (None,) * 6 + tuple(result)


def rowwise(op: Op, operands, consts=(0.0, 0.0), flag: int = 0, want_out=True, identity=(), mask=None):
    """Run ``op`` on ``operands`` (1 or 3 tensors broadcasting to ``[B, ...]``): ``(out, row sums [B])``, or
    only the row sums without ``want_out``. ``identity[i]``: the gradient of operand ``i`` is the incoming one."""
    return RowwiseFunction.apply(op, tuple(consts), flag, want_out, tuple(identity), mask, *operands)
