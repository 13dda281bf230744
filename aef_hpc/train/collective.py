"""What the training loop does together across ranks (no-ops in one process): the ActNorm initialisation from the
global first batch, and the per-rank files of a checkpoint. Means, sums and flags over ranks: ``process_group``."""

from pathlib import Path

import torch
import torch.distributed as dist

from ..engine.deepspeed import GatherStats, gathered_as_used
from ..flows.actnorm import ActNorm
from ..process_group import joined, world_info


def initialize_collectively(model: torch.nn.Module, x: torch.Tensor) -> GatherStats:
    """ActNorm's data-dependent initialisation from the global first batch: every rank's batch is gathered (in
    rank order, so the statistics are those of one process seeing the whole batch) and every rank initialises from
    it. Under ZeRO-3 each layer's parameters are gathered only while the pass uses them (the model is never whole
    on a rank) and rank 0's ActNorm values are partitioned again (the engines broadcast rank 0's weights too).
    Returns how many parameter elements were whole at once."""
    if joined():
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        x = torch.cat(parts)
    norms = [m for m in model.modules() if isinstance(m, ActNorm)]
    with torch.no_grad(), gathered_as_used(model, modified=norms) as stats:
        model.initialize(x)
    return stats


def rank_file(folder: Path, name: str) -> Path:
    """``folder/name-rank-R.pt``: a file each rank writes for itself (its RNG states)."""
    return folder / f"{name}-rank-{world_info()[0]}.pt"
