"""Per-sample likelihood evaluation over a stream of integer image batches."""

from collections.abc import Iterable

import torch

from ..data import dequantize


@torch.no_grad()
def evaluate_batches(fn, batches: Iterable[torch.Tensor], levels: int, generator: torch.Generator, device) -> torch.Tensor:
    """``fn(x) -> [B]`` over dequantized ``batches``; returns the concatenated ``[N]`` values (float64, CPU)."""
    out = [fn(dequantize(batch, levels, generator).to(device)).double().cpu() for batch in batches]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def negative_log_likelihood(model, batches, levels, num_samples, chunk_size, generator, device):
    """``-log p(x)`` per image in nats: exact for the partition family, importance-sampled otherwise."""
    model.eval()
    return evaluate_batches(lambda x: -model.marginal_log_prob(x, num_samples, chunk_size, generator), batches, levels, generator, device)


def mean_loss(model, batches, levels, generator, device) -> float:
    """The training objective averaged over ``batches`` (validation), in eval mode."""
    model.eval()
    return evaluate_batches(model.loss, batches, levels, generator, device).mean().item()
