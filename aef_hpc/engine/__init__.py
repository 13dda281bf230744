"""Engines and checkpoints (floor 3): what steps the optimizer and where its state is kept.

Every engine has one surface: ``loss(x)`` (the wrapped model's per-sample objective), ``backward_and_step(loss)``,
``save(dir)``, ``load(dir)`` and ``unwrap()``; the loop never knows which engine it drives. ``checkpoint`` holds
the folder protocol every engine's checkpoints follow (written whole or not at all).
"""

from .checkpoint import (
    Checkpoint,
    complete_checkpoints,
    find_resumable,
    open_checkpoint,
    save_checkpoint,
)
from .single import SingleEngine, StepResult

__all__ = [
    "Checkpoint",
    "SingleEngine",
    "StepResult",
    "complete_checkpoints",
    "find_resumable",
    "open_checkpoint",
    "save_checkpoint",
]
