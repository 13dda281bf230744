"""Evaluation (floor 4): likelihoods in nats and bits/dim, FID and denoising, sample grids and plots."""

from .evaluation import check_fid_weights, evaluate
from .grids import save_grid
from .likelihood import mean_loss, per_image_nll
from .plots import training_curves
from .restore import Trained, check_same_data, checkpoint_config, resolve_device, restore, restore_checkpoint
from .sampling import write_samples

__all__ = [
    "Trained",
    "check_fid_weights",
    "check_same_data",
    "checkpoint_config",
    "evaluate",
    "mean_loss",
    "per_image_nll",
    "resolve_device",
    "restore",
    "restore_checkpoint",
    "save_grid",
    "training_curves",
    "write_samples",
]
