"""Encoder/decoder networks: ``small`` (§2.1), ``big`` (VDVAE-like, §2.2) and ``mlp`` (any shape)."""

from ..errors import ModelError
from .base import VARIANCES, Decoder, Encoder
from .big import BigDecoder, BigEncoder, decoder_block_string, encoder_block_string
from .mlp import MLPDecoder, MLPEncoder
from .small import SmallDecoder, SmallEncoder

ARCHITECTURES = ("small", "big", "mlp")


def build_networks(
    architecture: str, image_shape, latent_dim: int, variance: str, **options
) -> tuple[Encoder, Decoder]:
    """Return ``(encoder, decoder)``; ``options`` are ``hidden_channels`` (small), ``width`` (big; ``None``: the
    latent dim) or ``hidden`` (mlp)."""
    if architecture == "small":
        width = {"hidden_channels": options.pop("hidden_channels", 64)}
        pair = SmallEncoder(image_shape, latent_dim, **width), SmallDecoder(image_shape, latent_dim, variance, **width)
    elif architecture == "big":
        width = {"width": options.pop("width", None)}
        pair = BigEncoder(image_shape, latent_dim, **width), BigDecoder(image_shape, latent_dim, variance, **width)
    elif architecture == "mlp":
        width = {"hidden": options.pop("hidden", 128)}
        pair = MLPEncoder(image_shape, latent_dim, **width), MLPDecoder(image_shape, latent_dim, variance, **width)
    else:
        raise ModelError(f"unknown architecture {architecture!r}: choose one of {', '.join(ARCHITECTURES)}")
    if options:
        raise ModelError(f"unknown option(s) {sorted(options)} for architecture {architecture!r}")
    return pair


__all__ = [
    "ARCHITECTURES",
    "VARIANCES",
    "BigDecoder",
    "BigEncoder",
    "Decoder",
    "Encoder",
    "MLPDecoder",
    "MLPEncoder",
    "SmallDecoder",
    "SmallEncoder",
    "build_networks",
    "decoder_block_string",
    "encoder_block_string",
]
