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
    none. Every op checks it first, on either path, before anything is flattened."""
    shapes = [tuple(t.shape) for t in tensors if t is not None]
    try:
        full = torch.broadcast_shapes(*shapes)
    except RuntimeError:
        raise ModelError(f"{name}: operands of shapes {shapes} do not broadcast to one [batch, ...] shape") from None
    if len(full) == 0:
        raise ModelError(f"{name}: operands of shapes {shapes} have no batch dimension")
    return full
