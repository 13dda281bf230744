"""Training (floor 4): the loop, its schedule, EMA, progress and run folder."""

from .loop import RunResult, TrainingDiverged, check_launch, train
from .run_dir import start_over_config, stopped_before_first_checkpoint

__all__ = [
    "RunResult",
    "TrainingDiverged",
    "check_launch",
    "start_over_config",
    "stopped_before_first_checkpoint",
    "train",
]
