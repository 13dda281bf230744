"""Learning-rate schedules as multipliers of ``train.lr`` by optimizer step (``torch.optim.lr_scheduler.LambdaLR``).

Step ``k`` (0-based: the first step is 0, the last ``steps - 1``) uses ``lr * lr_factor(k)``. ``constant``: 1
after an optional linear warmup (``(k + 1) / warmup_steps``, so step ``warmup_steps - 1`` reaches 1).
``cosine``: the warmup, then ``min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 at step
``warmup_steps`` to 1 at the last step, which therefore uses ``min_lr``.
"""

import functools
import math

import torch

from ..config import TrainConfig


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - 1 - cfg.warmup_steps))
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def build_scheduler(optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, cfg=cfg))
