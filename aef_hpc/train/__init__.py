"""Training (floor 4): the loop, its schedule, EMA, progress and run folder."""

from .loop import RunResult, TrainingDiverged, train

__all__ = ["RunResult", "TrainingDiverged", "train"]
