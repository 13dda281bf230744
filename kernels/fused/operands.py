"""Operands of a fused op as ``[rows, n]`` memory: a row stride and no copy wherever the layout allows one."""

import math
from dataclasses import dataclass

import torch


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
    if t.shape == full and (dtype is None or t.dtype == dtype) and t.is_contiguous():  # the common case, at once
        return Rows(t, n)
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


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
