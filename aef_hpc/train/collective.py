"""What the training loop does together across ranks (no-ops in one process): the ActNorm initialisation from the
global first batch, and the per-rank files of a checkpoint. Means, sums and flags over ranks: ``process_group``."""

from pathlib import Path

import torch
import torch.distributed as dist

from ..engine.deepspeed import gathered
from ..process_group import joined, world_info


def initialize_collectively(model: torch.nn.Module, x: torch.Tensor) -> None:
    """ActNorm's data-dependent initialisation from the global first batch: every rank's batch is gathered (in
    rank order, so the statistics are those of one process seeing the whole batch), every rank initialises from
    it, and under ZeRO-3 rank 0's result is partitioned again (the engines broadcast rank 0's weights too)."""
    if joined():
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        x = torch.cat(parts)
    with gathered(model, modifier=True):
        model.initialize(x)


def rank_file(folder: Path, name: str) -> Path:
    """``folder/name-rank-R.pt``: a file each rank writes for itself (its RNG states)."""
    return folder / f"{name}-rank-{world_info()[0]}.pt"
