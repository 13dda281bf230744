"""Training (floor 4)."""

from .factory import model_from_config
from .loop import RunResult, TrainingDiverged, train

__all__ = ["RunResult", "TrainingDiverged", "model_from_config", "train"]
