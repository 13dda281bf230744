"""The flow kinds of ``model.prior_flow`` and ``model.posterior_flow``, and their one dispatcher ``build_flow``."""

from ..errors import ModelError
from .autoregressive import masked_autoregressive_stack
from .base import Bijection, Identity, Inverse
from .coupling import coupling_stack

#: kind -> builder ``(features, hidden, num_layers, num_blocks) -> Bijection``
FLOWS = {
    "none": lambda *sizes: Identity(),
    "maf": masked_autoregressive_stack,  # parallel density, sequential sampling
    "iaf": lambda *sizes: Inverse(masked_autoregressive_stack(*sizes)),  # parallel sampling, sequential density
    "realnvp": coupling_stack,  # parallel both ways; needs features >= 2
}


def build_flow(kind: str, features: int, hidden: int = 256, num_layers: int = 4, num_blocks: int = 2) -> Bijection:
    """A ``kind`` flow on ``[B, features]``: ``num_layers`` layers with ``hidden`` units and ``num_blocks`` blocks
    (residual MADE blocks for maf/iaf, conditioner hidden layers for realnvp)."""
    if kind not in FLOWS:
        raise ModelError(f"unknown flow {kind!r}: choose one of {', '.join(FLOWS)}")
    return FLOWS[kind](features, hidden, num_layers, num_blocks)
