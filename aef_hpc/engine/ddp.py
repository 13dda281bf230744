"""The DDP engine: ``SingleEngine``'s step (accumulation, clipping, skipping) around torch's
DistributedDataParallel, which averages gradients over ranks during ``backward``.

Micro-batches before an accumulation boundary run under ``no_sync`` (no all-reduce until the last one), and the
skip decision is all-reduced so that every rank takes or skips the same steps.
"""

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..process_group import world_info
from .single import SingleEngine


class DDPEngine(SingleEngine):
    name = "ddp"

    def __init__(self, model, optimizer, scheduler, grad_clip, accumulate=1, skip_threshold=None, compile=False,
                 precision="fp32"):  # fmt: skip
        super().__init__(model, optimizer, scheduler, grad_clip, accumulate, skip_threshold, False, precision)
        device = next(model.parameters()).device
        self.wrapped = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        self._forward = torch.compile(self.wrapped) if compile else self.wrapped

    def _call(self, x: torch.Tensor, noise) -> torch.Tensor:
        last = (self._micro + 1) % self.accumulate == 0
        with contextlib.nullcontext() if last else self.wrapped.no_sync():
            return self._forward(x, noise)

    def _agree(self, ok: torch.Tensor) -> torch.Tensor:
        flag = ok.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return flag.bool()

    def save(self, folder: Path) -> None:
        """Every rank holds the same weights and optimizer state: rank 0 writes them."""
        if world_info()[0] == 0:
            super().save(folder)
