"""Per-image likelihoods over a stream of integer image batches: exact, or importance-sampled with repeats."""

import itertools
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..data import dequantize_keyed, sample_id
from ..errors import AEFWarning
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


#: draws x images x pixels per pass through the model on a CPU when ``eval.chunk_size`` is null (256 rows of
#: 28x28 images): oneDNN's transposed convolutions of the small nets run at 89-97 % of the matmul peak up to ~256
#: rows of 28x28 and fall to 57-60 % at 1,024 (they outgrow the caches), so the default MNIST evaluation (256
#: images, K=128) ran 1.74x faster at 1 draw per pass than at 32, with the same records (``aef-hpc bench eval
#: --vs-limit``, docs/benchmarks.md). Counted in pixels, not rows: the embedded 8x8 digits' passes of 256 rows
#: (1 draw) ran 1.44x slower than 32 draws (the per-pass overhead dominates), at 12 draws as fast as at 32.
CPU_PASS_PIXELS = 256 * 28 * 28
#: draws per pass on CUDA when ``eval.chunk_size`` is null (wide passes keep a GPU busy; not yet measured)
GPU_CHUNK = 32


def draws_per_chunk(chunk_size: int | None, images: int, pixels: int, num_samples: int, device) -> int:
    """``chunk_size``, or for ``None`` the draws that keep a pass of ``images`` images of ``pixels`` values each near
    ``CPU_PASS_PIXELS`` on the CPU (or another non-CUDA device; ``GPU_CHUNK`` on CUDA), between 1 and
    ``num_samples``. The estimate does not depend on it (all K draws are made first)."""
    if chunk_size is not None:
        return chunk_size
    on_cpu = CPU_PASS_PIXELS // max(images * pixels, 1)
    fitting = GPU_CHUNK if torch.device(device).type == "cuda" else on_cpu
    return max(1, min(num_samples, fitting))


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast runs on bf16 hardware: a GPU with native bf16 (Ampere and later), or a CPU with AMX or
    AVX512-BF16 (elsewhere it is emulated, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


@contextmanager
def evaluation_mode(model, device: torch.device, precision: str = "fp32"):
    """How an evaluation runs ``model``: in eval mode without autograd; on the CPU its 4-D (convolution) weights in
    channels-last order, on which oneDNN's convolutions run ~1.25x faster (``aef-hpc bench eval --vs-limit``; the
    values are unchanged, an image's NLL moves by float32 rounding only), converted one weight at a time and back
    to its own layout after (the model is never held twice; a weight already channels-last, a view into a flat
    buffer, or a nested use, is left as it is); ``precision="bf16"``: bf16 autocast (opt-in, ``eval.precision``;
    log-densities still add up in float32)."""
    if precision == "bf16" and not bf16_is_fast(device):
        warnings.warn(
            f"eval.precision=bf16 on a {'GPU' if device.type == 'cuda' else 'CPU'} without bf16 instructions "
            "(AMX, AVX512-BF16, or a GPU of compute capability 8.0 or later): it is emulated, slower than fp32",
            AEFWarning,
            stacklevel=3,
        )
    model.eval()
    cl = torch.channels_last
    moved = [p for p in model.parameters() if p.dim() == 4 and not p.is_contiguous(memory_format=cl) and _owns(p)]
    moved = moved if device.type == "cpu" else []
    for p in moved:
        p.data = p.data.contiguous(memory_format=cl)
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield model
    finally:
        for p in moved:
            p.data = p.data.contiguous()


def _owns(p: torch.Tensor) -> bool:
    """Whether ``p`` is its whole storage (not a view into a flat buffer an optimizer steps, which a converted copy
    would leave behind)."""
    return p.storage_offset() == 0 and p.untyped_storage().nbytes() == p.numel() * p.element_size()


def per_image_nll(
    model,
    batches: Iterable,
    levels: int,
    num_samples: int,
    repeats: int,
    chunk_size: int | None,
    seed: int,
    device,
    precision: str = "fp32",
) -> PerImage:
    """Exact ``-log p(x)`` (partition AEFs) or the mean of ``repeats`` importance-sampling estimates
    ``-log mean_k w_k`` of ``K = num_samples`` draws (the paper's 20 x 128), ``chunk_size`` draws at a time
    (``None``: ``draws_per_chunk``), run in
    ``evaluation_mode``. An image's dequantization noise and proposal draws are keyed by ``(seed, its key)``: its NLL
    does not depend on the batch, worker or rank that evaluates it (beyond float32 rounding)."""
    with evaluation_mode(model, torch.device(device), precision):
        return per_image_nll_as_is(model, batches, levels, num_samples, repeats, chunk_size, seed, device)


def per_image_nll_as_is(model, batches, levels, num_samples, repeats, chunk_size, seed, device) -> PerImage:
    """``per_image_nll`` with the model as the caller set it up (mode, layout, autograd, autocast): inside an
    ``evaluation_mode`` held over a whole stream, or for ``bench eval --vs-limit``, which measures that mode against
    the model's own layout."""
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
            chunk = draws_per_chunk(chunk_size, len(x), x[0].numel(), num_samples, x.device)
            log_w = model.log_importance_weights(x, num_samples, chunk, noise).double()
            estimates.append(log_mean_exp(log_w))
            sizes.append(effective_sample_size(log_w))
        nll.append(-torch.stack(estimates).mean(0).cpu())
        ess.append(torch.stack(sizes).mean(0).cpu())
    empty = torch.zeros(0, dtype=torch.float64)
    return PerImage(keys, torch.cat(nll) if nll else empty, (torch.cat(ess) if ess else empty) if ess else None)


@torch.no_grad()
def mean_loss(loss_fn, batches: Iterable, levels: int, seed: int, device, idle: torch.Tensor | None = None) -> float:
    """``loss_fn(x, noise)`` (a model's objective, in eval mode) averaged over every image of ``batches``, and over
    every rank's share when a process group is joined (validation). Each image's dequantization noise is keyed by
    ``(seed, its key)``, and so are a stochastic objective's posterior draws: the same value on any number of
    ranks. ``idle`` (ZeRO-3, whose every forward gathers parameters from all ranks): the ranks go batch by batch
    together, and a rank whose share is done runs ``loss_fn`` on ``idle`` (an image batch, the result dropped) while
    another still has a batch, so no rank waits in a gather that the others never join; each rank then holds its
    share of the split's integer images at once."""
    lockstep = idle is not None and dist.is_available() and dist.is_initialized()
    total = torch.zeros(2, dtype=torch.float64)  # the sum of the objective, the image count
    # in lockstep the rank's share is read first (its integer images): a shard stream's own count check, a collective
    # at its end, then runs on every rank before the first lockstep flag instead of meeting another rank's flag
    batches = iter(list(batches) if lockstep else batches)
    while True:
        batch = next(batches, None)
        if lockstep and not _any_rank(batch is not None):
            break
        if batch is None and lockstep:
            loss_fn(idle.to(device), model_noise(torch.zeros(len(idle), dtype=torch.int64, device=device), seed))
            continue
        if batch is None:
            break
        keys, images = batch
        ids = torch.tensor([sample_id(k) for k in keys], device=device)
        x = dequantize_keyed(images.to(device), levels, ids, seed)
        total[0] += loss_fn(x, model_noise(ids, seed)).double().sum().cpu()
        total[1] += len(images)
    if dist.is_available() and dist.is_initialized():
        reduced = total.to(collective_device())
        dist.all_reduce(reduced)
        total = reduced.cpu()
    return (total[0] / max(total[1].item(), 1)).item()


def _any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank of the process group."""
    reduced = torch.tensor([int(flag)], device=collective_device())
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
    return bool(reduced.item())


def first_images(batches: Iterable, n: int) -> torch.Tensor:
    """The first ``n`` integer images of ``(keys, images)`` batches, ``[n', C, H, W]`` with ``n' <= n``."""
    return torch.cat([images for _, images in itertools.islice(limited(batches, n), None)])
