"""The "small" convolutional encoder/decoder of method.md §2.1 (two stride-2 convs; H, W divisible by 4)."""

from torch import nn

from ..errors import ModelError
from .base import Decoder, Encoder


def check_small_shape(image_shape) -> None:
    _, h, w = image_shape
    if h % 4 or w % 4:
        raise ModelError(
            f"architecture 'small' needs height and width divisible by 4, got {h}x{w}: use 'mlp' or resize"
        )


class SmallEncoder(Encoder):
    """Conv(C→h, k3 s2) → ReLU → Conv(h→2h, k3 s2) → ReLU → flatten → two linear heads."""

    def __init__(self, image_shape, latent_dim: int, hidden_channels: int = 64):
        super().__init__()
        check_small_shape(image_shape)
        c, h, w = image_shape
        self.convs = nn.Sequential(
            nn.Conv2d(c, hidden_channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, 2 * hidden_channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        flat = 2 * hidden_channels * (h // 4) * (w // 4)
        self.fc_mu = nn.Linear(flat, latent_dim)
        self.fc_sigma = nn.Linear(flat, latent_dim)

    def heads(self, y):
        h = self.convs(y)
        return self.fc_mu(h), self.fc_sigma(h)


class SmallDecoder(Decoder):
    """Linear(d → 2h·H/4·W/4) → reshape (no activation) → ConvT(2h→h, k4 s2) → ReLU → ConvT(h→C or 2C)."""

    def __init__(self, image_shape, latent_dim: int, variance: str, hidden_channels: int = 64):
        super().__init__(image_shape, variance, independent_init=0.0)
        check_small_shape(image_shape)
        _, h, w = image_shape
        self.grid = (2 * hidden_channels, h // 4, w // 4)
        self.fc = nn.Linear(latent_dim, self.grid[0] * self.grid[1] * self.grid[2])
        self.deconvs = nn.Sequential(
            nn.ConvTranspose2d(2 * hidden_channels, hidden_channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(hidden_channels, self.out_channels, 4, stride=2, padding=1),
        )

    def trunk(self, z):
        return self.deconvs(self.fc(z).reshape(z.shape[0], *self.grid))
