"""Per-sample likelihood evaluation over a stream of integer image batches."""

from collections.abc import Iterable

import torch

from ..data import dequantize


@torch.no_grad()
def evaluate_batches(
    fn, batches: Iterable, levels: int, generator: torch.Generator, device
) -> tuple[list, torch.Tensor]:
    """``fn(x) -> [B]`` over dequantized ``(keys, images)`` batches; returns all keys and the ``[N]`` values."""
    keys, out = [], []
    for batch_keys, images in batches:
        keys += list(batch_keys)
        out.append(fn(dequantize(images, levels, generator).to(device)).double().cpu())
    return keys, (torch.cat(out) if out else torch.zeros(0, dtype=torch.float64))


def negative_log_likelihood(model, batches, levels, num_samples, chunk_size, generator, device):
    """``(keys, -log p(x))`` per image in nats: exact for the partition family, importance-sampled otherwise."""
    model.eval()
    return evaluate_batches(
        lambda x: -model.marginal_log_prob(x, num_samples, chunk_size, generator), batches, levels, generator, device
    )


def mean_loss(model, batches, levels, generator, device) -> float:
    """The training objective averaged over ``batches`` (validation), in eval mode."""
    model.eval()
    return evaluate_batches(model.loss, batches, levels, generator, device)[1].mean().item()
