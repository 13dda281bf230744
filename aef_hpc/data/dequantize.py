"""Uniform dequantization (method.md §1.1): ``x = (x_int + u) / levels``, ``u ~ U[0, 1)`` from a seeded generator."""

import torch


def dequantize(images: torch.Tensor, levels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer images with values in ``0..levels-1`` -> float32 pixels in [0, 1)."""
    device = generator.device if generator is not None else images.device
    noise = torch.rand(images.shape, generator=generator, device=device).to(images.device)
    return (images.to(torch.float32) + noise) / levels
