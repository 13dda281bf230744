"""MADE with residual blocks (Germain et al. 2015; nflows' ResidualMADE, sequential degrees).

Output ``k`` of feature ``i`` depends only on inputs ``< i``: input degrees are ``1..d``, hidden degrees
cycle through ``1..d-1`` and output ``i`` sees hidden units of degree ``< i``.
"""

import torch
import torch.nn.functional as F
from torch import nn


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 connectivity mask; ``near_zero``: weight and bias
    drawn from U(-near_zero, near_zero) instead, in its own ``__init__`` (under ZeRO-3's ``zero.Init`` a module's
    parameters are partitioned when its own ``__init__`` returns, so a parent's later change to them would be
    lost)."""

    def __init__(self, in_degrees: torch.Tensor, out_degrees: torch.Tensor, strict: bool, near_zero: float = 0.0):
        super().__init__(len(in_degrees), len(out_degrees))
        if near_zero:
            nn.init.uniform_(self.weight, -near_zero, near_zero)
            nn.init.uniform_(self.bias, -near_zero, near_zero)
        allowed = out_degrees[:, None] > in_degrees[None, :] if strict else out_degrees[:, None] >= in_degrees[None, :]
        self.register_buffer("mask", allowed.to(self.weight.dtype))

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class MaskedResidualBlock(nn.Module):
    """``x + W2 relu(W1 relu(x))`` with masks that keep hidden degrees; starts near the identity."""

    def __init__(self, degrees: torch.Tensor):
        super().__init__()
        self.first = MaskedLinear(degrees, degrees, strict=False)
        self.second = MaskedLinear(degrees, degrees, strict=False, near_zero=1e-3)

    def forward(self, x):
        return x + self.second(F.relu(self.first(F.relu(x))))


class ResidualMADE(nn.Module):
    """Maps ``[B, d] -> [B, d, outputs_per_feature]`` autoregressively:
    ``final(block_K(... block_1(initial(x))))`` with no activation before ``final`` (nflows' ResidualMADE)."""

    def __init__(self, features: int, hidden: int = 256, num_blocks: int = 2, outputs_per_feature: int = 2):
        super().__init__()
        in_degrees = torch.arange(1, features + 1)
        hidden_degrees = torch.arange(hidden) % max(1, features - 1) + min(1, features - 1)
        self.outputs_per_feature = outputs_per_feature
        self.initial = MaskedLinear(in_degrees, hidden_degrees, strict=False)
        self.blocks = nn.ModuleList(MaskedResidualBlock(hidden_degrees) for _ in range(num_blocks))
        self.final = MaskedLinear(hidden_degrees, in_degrees.repeat_interleave(outputs_per_feature), strict=True)

    def forward(self, x):
        h = self.initial(x)
        for block in self.blocks:
            h = block(h)
        return self.final(h).reshape(x.shape[0], x.shape[1], self.outputs_per_feature)
