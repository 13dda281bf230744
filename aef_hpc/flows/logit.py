"""The logit preprocessing bijection of method.md §1.1 (affine squeeze, then logit), on any shape."""

import torch

from .. import kernels
from ..errors import DataError
from .base import Bijection


class LogitPreprocess(Bijection):
    """``forward``: pixels in [0, 1] -> logits, with the §1.1 log-det; ``inverse``: back, unclamped."""

    def __init__(self, alpha: float):
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise DataError(f"alpha={alpha} is outside [0, 0.5): the squeeze s = alpha + (1 - 2 alpha) x needs it")
        self.alpha = alpha

    def forward(self, x):
        """Pixels in the bijection's domain, ``s = alpha + (1 - 2 alpha) x`` in [0, 1]: data in [0, 1], and the
        decoder's own (unclamped) outputs, up to ``alpha / (1 - 2 alpha)`` beyond it. One host sync."""
        margin = self.alpha / (1 - 2 * self.alpha)
        margin += 8 * torch.finfo(x.dtype).eps * (1 + margin) if x.is_floating_point() else 0  # a saturated output
        if not ((x >= -margin) & (x <= 1 + margin)).all():  # False for NaN too
            if not torch.isfinite(x).all():
                raise DataError("input contains NaN or inf: pixels must be finite values in [0, 1]")
            raise DataError(
                f"input values lie in [{x.min().item():.4g}, {x.max().item():.4g}], outside [0, 1]: "
                "pass dequantized pixels scaled to [0, 1]"
            )
        return kernels.logit_preprocess(x, self.alpha)

    def inverse(self, y):
        return kernels.logit_preprocess_inverse(y, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
