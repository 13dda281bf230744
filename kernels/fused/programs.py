r"""The two Triton programs every fused op runs: its elementwise math over ``[rows, n]`` plus a sum per row.

An op (``rowwise.Op``) supplies ``MATH``, two ``@triton.jit`` functions of up to three operands ``a, b, c``, its
two float constants ``CONST_A, CONST_B`` (``constexpr``: exact in float64, where a float argument would be
float32) and a ``VARIANT`` (0: the map, 1: its inverse):

- forward ``MATH(a, b, c, CONST_A, CONST_B, VARIANT) -> (out, term)``: the output and the term summed per row;
- backward ``MATH(a, b, c, g, g_row, CONST_A, CONST_B, VARIANT) -> (ga, gb, gc)``: the gradients of
  :math:`\sum_i g_i\,\mathrm{out}_i + g_{row} \sum_i \mathrm{term}_i` (``g`` is 0 when ``out`` has no gradient).

A program covers ``ROWS`` rows × ``BLOCK`` columns; the forward writes one partial row sum per program (its chunk),
added up afterwards. Its ``BLOCK`` is fixed by the row length alone (see ``tuning``).
"""

import triton
import triton.language as tl

#: backward gradient modes of an operand
NO_GRAD, PER_ENTRY, SUMMED_OVER_ROWS = 0, 1, 2


@triton.jit
def _load(
    a_ptr, b_ptr, c_ptr, row, a_rs, b_rs, c_rs, cols, live,
    OPERANDS: tl.constexpr, UNREAD: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """One row's chunk of each operand in the compute dtype (a one-operand op gets ``a`` three times); the
    operands in the bitmask ``UNREAD`` (1: a, 2: b, 4: c) are not read: zeros."""
    a = tl.zeros(cols.shape, ACC) if UNREAD & 1 else tl.load(a_ptr + row * a_rs + cols, mask=live, other=0.5).to(ACC)
    if OPERANDS == 1:
        return a, a, a
    b = tl.zeros(cols.shape, ACC) if UNREAD & 2 else tl.load(b_ptr + row * b_rs + cols, mask=live, other=1.0).to(ACC)
    c = tl.zeros(cols.shape, ACC) if UNREAD & 4 else tl.load(c_ptr + row * c_rs + cols, mask=live, other=0.0).to(ACC)
    return a, b, c


@triton.jit
def forward_program(
    a_ptr,
    b_ptr,
    c_ptr,
    m_ptr,
    out_ptr,
    partial_ptr,
    rows,
    n,
    chunks,
    a_rs,
    b_rs,
    c_rs,
    m_rs,
    MATH: tl.constexpr,
    CONST_A: tl.constexpr,
    CONST_B: tl.constexpr,
    VARIANT: tl.constexpr,
    OPERANDS: tl.constexpr,
    UNREAD: tl.constexpr,
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
        a, b, c = _load(a_ptr, b_ptr, c_ptr, row, a_rs, b_rs, c_rs, cols, live, OPERANDS, UNREAD, ACC)
        out, term = MATH(a, b, c, CONST_A, CONST_B, VARIANT)
        if HAS_MASK:
            w = tl.load(m_ptr + row * m_rs + cols, mask=live, other=0.0).to(ACC)
            out = out * w
            term = term * w
        if WRITE_OUT:
            tl.store(out_ptr + row * n + cols, out.to(out_ptr.dtype.element_ty), mask=live)
        tl.store(partial_ptr + row * chunks + chunk, tl.sum(tl.where(live, term, 0.0), axis=0), mask=row < rows)


@triton.jit
def backward_program(
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
    CONST_A: tl.constexpr,
    CONST_B: tl.constexpr,
    VARIANT: tl.constexpr,
    OPERANDS: tl.constexpr,
    UNREAD: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_GRAD_OUT: tl.constexpr,
    GRAD_A: tl.constexpr,
    GRAD_B: tl.constexpr,
    GRAD_C: tl.constexpr,
    ACC: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``GRAD_A, GRAD_B, GRAD_C``: 0 no gradient, 1 one per entry, 2 summed over this program's rows entry by entry
    (a broadcast operand: one partial row per program, in row order whatever the block or warps)."""
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
        a, b, c = _load(a_ptr, b_ptr, c_ptr, row, a_rs, b_rs, c_rs, cols, live, OPERANDS, UNREAD, ACC)
        g_row = tl.load(grow_ptr + row, mask=row < rows, other=0.0).to(ACC)
        if HAS_GRAD_OUT:
            g = tl.load(g_ptr + row * g_rs + cols, mask=live, other=0.0).to(ACC)
        else:
            g = tl.zeros((BLOCK,), dtype=ACC)
        if HAS_MASK:
            w = tl.load(m_ptr + row * m_rs + cols, mask=live, other=0.0).to(ACC)
            g = g * w
            g_row = g_row * w
        ga, gb, gc = MATH(a, b, c, g, g_row, CONST_A, CONST_B, VARIANT)
        if GRAD_A == 1:
            tl.store(ga_ptr + row * n + cols, ga.to(ga_ptr.dtype.element_ty), mask=live)
        if GRAD_A == 2:
            sum_a += tl.where(live, ga, 0.0)
        if GRAD_B == 1:
            tl.store(gb_ptr + row * n + cols, gb.to(gb_ptr.dtype.element_ty), mask=live)
        if GRAD_B == 2:
            sum_b += tl.where(live, gb, 0.0)
        if GRAD_C == 1:
            tl.store(gc_ptr + row * n + cols, gc.to(gc_ptr.dtype.element_ty), mask=live)
        if GRAD_C == 2:
            sum_c += tl.where(live, gc, 0.0)
    if GRAD_A == 2:
        tl.store(ga_ptr + block_row * n + cols, sum_a, mask=inside)
    if GRAD_B == 2:
        tl.store(gb_ptr + block_row * n + cols, sum_b, mask=inside)
    if GRAD_C == 2:
        tl.store(gc_ptr + block_row * n + cols, sum_c, mask=inside)
