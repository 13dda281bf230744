"""Shared helpers: the batch shape of an op's operands, per-sample row sums in a dtype of at least float32."""

import torch

from aef_hpc.errors import ModelError


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, bf16 and fp16 accumulate in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """``accumulation_dtype`` of a tensor."""
    return accumulation_dtype(t.dtype)


def row_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over every non-batch dim, `[B, ...] -> [B]`, in the accumulation dtype."""
    return t.reshape(t.shape[0], -1).to(acc_dtype(t)).sum(dim=1)


def batch_shape(name: str, *tensors: torch.Tensor | None) -> torch.Size:
    """The ``[B, ...]`` shape the operands (``None`` skipped) broadcast to; a one-line ``ModelError`` if there is
    none. Every op checks it first, on either path, before anything is flattened. Plain Python on ``torch.Size``
    (``torch.broadcast_shapes`` cost ~50 us a call, most of a fused op's host time)."""
    shapes = [t.shape for t in tensors if t is not None]
    if not shapes:
        raise ModelError(f"{name}: no operands")
    full = shapes[0]
    for shape in shapes[1:]:
        if shape != full:
            full = _broadcast(name, shapes, full, shape)
    if len(full) == 0:
        raise ModelError(f"{name}: operands of shapes {[tuple(s) for s in shapes]} have no batch dimension")
    return full


def _broadcast(name: str, shapes: list, a: torch.Size, b: torch.Size) -> torch.Size:
    """NumPy's broadcast of two shapes (aligned at the right; a 1 or a missing dim takes the other's size)."""
    width = max(len(a), len(b))
    a, b = (1,) * (width - len(a)) + tuple(a), (1,) * (width - len(b)) + tuple(b)
    if any(x != y and x != 1 and y != 1 for x, y in zip(a, b, strict=True)):
        raise ModelError(
            f"{name}: operands of shapes {[tuple(s) for s in shapes]} do not broadcast to one [batch, ...] shape"
        )
    return torch.Size(y if x == 1 else x for x, y in zip(a, b, strict=True))
