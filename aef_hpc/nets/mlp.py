"""The "mlp" encoder/decoder: fully connected nets for tiny or flat inputs of any shape (e.g. 1×1×2)."""

import math

from torch import nn

from .base import Decoder, Encoder


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out)
    )


class MLPEncoder(Encoder):
    """flatten → Linear → ReLU → Linear → ReLU → Linear(→ 2d), split into (mu, raw sigma)."""

    def __init__(self, image_shape, latent_dim: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), _mlp(math.prod(image_shape), hidden, 2 * latent_dim))

    def heads(self, y):
        mu, raw = self.net(y).chunk(2, dim=1)
        return mu, raw


class MLPDecoder(Decoder):
    """Linear → ReLU → Linear → ReLU → Linear(→ C·H·W or 2C·H·W), reshaped to an image."""

    def __init__(self, image_shape, latent_dim: int, variance: str, hidden: int = 128):
        super().__init__(image_shape, variance, independent_init=0.0)
        _, h, w = image_shape
        self.out_shape = (self.out_channels, h, w)
        self.net = _mlp(latent_dim, hidden, math.prod(self.out_shape))

    def trunk(self, z):
        return self.net(z).reshape(z.shape[0], *self.out_shape)
