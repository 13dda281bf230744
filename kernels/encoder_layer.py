r"""AEF encoder affine layer: :math:`z = \mu + (\sigma + \epsilon)\odot c`, :math:`\log|J| = \sum\log(\sigma+\epsilon)`.

``mu`` and ``sigma`` come from the encoder network (sigma already positive); ``core`` is the core (partition
family), the expansion variable (expanded family) or the reparameterisation noise (VAE).
"""

from ._rows import row_sum


def encoder_layer(mu, sigma, core, eps: float):
    """Density direction core -> latent: ``(mu + (sigma + eps) * core, sum log(sigma + eps))``."""
    scale = sigma + eps
    return mu + scale * core, row_sum(scale.log())


def encoder_layer_inverse(mu, sigma, z, eps: float):
    """Sampling direction latent -> core: ``((z - mu) / (sigma + eps), -sum log(sigma + eps))``."""
    scale = sigma + eps
    return (z - mu) / scale, -row_sum(scale.log())
