"""What the training loop agrees on across ranks (all no-ops in one process): the ActNorm initialisation batch,
logged means and sums, and stop requests."""

from pathlib import Path

import torch
import torch.distributed as dist

from ..engine.deepspeed import gathered
from ..engine.discovery import collective_device, world_info


def _joined() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def initialize_collectively(model: torch.nn.Module, x: torch.Tensor) -> None:
    """ActNorm's data-dependent initialisation from the global first batch: every rank's batch is gathered (in
    rank order, so the statistics are those of one process seeing the whole batch), every rank initialises from
    it, and under ZeRO-3 rank 0's result is partitioned again (the engines broadcast rank 0's weights too)."""
    if _joined():
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        x = torch.cat(parts)
    with gathered(model, modifier=True):
        model.initialize(x)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over ranks."""
    if not _joined():
        return value
    reduced = value.detach().to(collective_device(), torch.float64).reshape(1)
    dist.all_reduce(reduced)
    return (reduced / dist.get_world_size()).to(value.device).reshape(())


def world_sum(value: float) -> float:
    """The sum of a number over ranks."""
    if not _joined():
        return value
    reduced = torch.tensor([float(value)], dtype=torch.float64, device=collective_device())
    dist.all_reduce(reduced)
    return reduced.item()


def any_rank(flag: bool) -> bool:
    """``True`` on every rank when ``flag`` is true on one (a signal that reached only some ranks)."""
    if not _joined():
        return flag
    reduced = torch.tensor([int(flag)], device=collective_device())
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
    return bool(reduced.item())


def rank_file(folder: Path, name: str) -> Path:
    """``folder/name-rank-R.pt``: a file each rank writes for itself (its RNG states)."""
    return folder / f"{name}-rank-{world_info()[0]}.pt"
