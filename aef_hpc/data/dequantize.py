"""Uniform dequantization (method.md §1.1): ``x = (x_int + u) / levels``, ``u ~ U[0, 1)``.

``u`` comes either from a seeded generator (``dequantize``), or from noise keyed by the image (``dequantize_keyed``,
see ``aef_hpc.noise``): every image gets the same noise whichever rank, worker or batch position it lands on, so N
ranks train and evaluate exactly what one process would.
"""

import torch

from ..noise import keyed_uniform


def dequantize(images: torch.Tensor, levels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer images with values in ``0..levels-1`` -> float32 pixels in [0, 1)."""
    device = generator.device if generator is not None else images.device
    noise = torch.rand(images.shape, generator=generator, device=device).to(images.device)
    return (images.to(torch.float32) + noise) / levels


def dequantize_keyed(images: torch.Tensor, levels: int, ids: torch.Tensor, *seeds: int) -> torch.Tensor:
    """``dequantize`` with ``keyed_uniform(ids, image shape, *seeds, 0)`` noise."""
    noise = keyed_uniform(ids.to(images.device), images.shape[1:], *seeds, 0)
    return (images.to(torch.float32) + noise) / levels
