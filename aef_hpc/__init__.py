"""aef_hpc: AutoEncoders within Flows (Silvestri, Roos & Ambrogioni, ICLR 2023) and VAE baselines, at scale."""

from .errors import AEFError
from .metrics import bits_per_dim
from .models import build_model

__version__ = "0.1.0"
__all__ = ["AEFError", "bits_per_dim", "build_model", "__version__"]
