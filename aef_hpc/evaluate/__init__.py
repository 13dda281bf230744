"""Evaluation (floor 4): likelihoods in nats and bits/dim, sample grids."""

from .grids import save_grid
from .likelihood import evaluate_batches, mean_loss, negative_log_likelihood

__all__ = ["evaluate_batches", "mean_loss", "negative_log_likelihood", "save_grid"]
