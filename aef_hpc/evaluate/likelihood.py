"""Per-image likelihoods over a stream of integer image batches: exact, or importance-sampled with repeats."""

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..data import dequantize_keyed, sample_id
from ..models.base import effective_sample_size, log_mean_exp
from ..noise import KeyedNoise, model_noise
from ..process_group import collective_device


@dataclass
class PerImage:
    """Keys, ``-log p(x)`` in nats (float64) and, for importance sampling, the mean effective sample size."""

    keys: list[str]
    nll: torch.Tensor
    ess: torch.Tensor | None


def limited(batches: Iterable, limit: int | None):
    """The ``(keys, images)`` batches cut after ``limit`` images in total (all of them for ``None``)."""
    seen = 0
    for keys, images in batches:
        if limit is not None and seen >= limit:
            return
        take = len(keys) if limit is None else min(len(keys), limit - seen)
        seen += take
        yield list(keys)[:take], images[:take]


@torch.no_grad()
def per_image_nll(
    model,
    batches: Iterable,
    levels: int,
    num_samples: int,
    repeats: int,
    chunk_size: int,
    seed: int,
    device,
) -> PerImage:
    """Exact ``-log p(x)`` (partition AEFs) or the mean of ``repeats`` importance-sampling estimates
    ``-log mean_k w_k`` of ``K = num_samples`` draws (the paper's 20 x 128), ``chunk_size`` draws at a time.
    An image's dequantization noise and proposal draws are keyed by ``(seed, its key)``: its NLL does not depend on
    the batch, worker or rank that evaluates it."""
    model.eval()
    keys, nll, ess = [], [], []
    for batch_keys, images in batches:
        keys += batch_keys
        ids = torch.tensor([sample_id(k) for k in batch_keys], device=device)
        x = dequantize_keyed(images.to(device), levels, ids, seed)
        if model.exact_likelihood:
            nll.append(-model.log_prob(x).double().cpu())
            continue
        estimates, sizes = [], []
        for repeat in range(repeats):
            noise = KeyedNoise(ids, seed, 1, repeat)
            log_w = model.log_importance_weights(x, num_samples, chunk_size, noise).double()
            estimates.append(log_mean_exp(log_w))
            sizes.append(effective_sample_size(log_w))
        nll.append(-torch.stack(estimates).mean(0).cpu())
        ess.append(torch.stack(sizes).mean(0).cpu())
    empty = torch.zeros(0, dtype=torch.float64)
    return PerImage(keys, torch.cat(nll) if nll else empty, (torch.cat(ess) if ess else empty) if ess else None)


@torch.no_grad()
def mean_loss(loss_fn, batches: Iterable, levels: int, seed: int, device) -> float:
    """``loss_fn(x, noise)`` (a model's objective, in eval mode) averaged over every image of ``batches``, and over
    every rank's share when a process group is joined (validation). Each image's dequantization noise is keyed by
    ``(seed, its key)``, and so are a stochastic objective's posterior draws: the same value on any number of
    ranks."""
    total = torch.zeros(2, dtype=torch.float64)  # the sum of the objective, the image count
    for keys, images in batches:
        ids = torch.tensor([sample_id(k) for k in keys], device=device)
        x = dequantize_keyed(images.to(device), levels, ids, seed)
        total[0] += loss_fn(x, model_noise(ids, seed)).double().sum().cpu()
        total[1] += len(images)
    if dist.is_available() and dist.is_initialized():
        reduced = total.to(collective_device())
        dist.all_reduce(reduced)
        total = reduced.cpu()
    return (total[0] / max(total[1].item(), 1)).item()


def first_images(batches: Iterable, n: int) -> torch.Tensor:
    """The first ``n`` integer images of ``(keys, images)`` batches, ``[n', C, H, W]`` with ``n' <= n``."""
    return torch.cat([images for _, images in itertools.islice(limited(batches, n), None)])
