"""Per-sample likelihood evaluation over a set of integer images, in batches."""

import torch

from ..data import dequantize


@torch.no_grad()
def evaluate_batches(
    fn, images: torch.Tensor, levels: int, batch_size: int, generator: torch.Generator, device
) -> torch.Tensor:
    """``fn(x) -> [B]`` over dequantized batches of ``images``; returns the concatenated ``[N]`` values."""
    out = [fn(dequantize(batch, levels, generator).to(device)) for batch in images.split(batch_size)]
    return torch.cat(out).double().cpu()


def negative_log_likelihood(model, images, levels, batch_size, num_samples, chunk_size, generator, device):
    """``-log p(x)`` per image in nats: exact for the partition family, importance-sampled otherwise."""
    model.eval()
    return evaluate_batches(
        lambda x: -model.marginal_log_prob(x, num_samples, chunk_size, generator),
        images,
        levels,
        batch_size,
        generator,
        device,
    )


def mean_loss(model, images, levels, batch_size, generator, device) -> float:
    """The training objective averaged over ``images`` (validation), in eval mode."""
    model.eval()
    return evaluate_batches(model.loss, images, levels, batch_size, generator, device).mean().item()
