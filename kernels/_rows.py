"""Shared helpers: per-sample row sums in an accumulation dtype of at least float32."""

import torch


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; float32, bf16 and fp16 accumulate in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def row_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over every non-batch dim, `[B, ...] -> [B]`, in the accumulation dtype."""
    return t.reshape(t.shape[0], -1).to(acc_dtype(t)).sum(dim=1)
