r"""AEF encoder affine layer: :math:`z = \mu + (\sigma + \epsilon)\odot c`, :math:`\log|J| = \sum\log(\sigma+\epsilon)`.

``mu`` and ``sigma`` come from the encoder network (sigma already positive); ``core`` is the core (partition
family), the expansion variable (expanded family) or the reparameterisation noise (VAE). Triton math and its
gradients: ``fused/encoder_layer.py``.
"""

from ._rows import batch_shape, row_sum
from .dispatch import wants_triton


def encoder_layer_reference(mu, sigma, v, eps: float, inverse: bool = False):
    scale = sigma + eps
    out = (v - mu) / scale if inverse else mu + scale * v
    logdet = row_sum(scale.log().expand(out.shape))  # every entry of the output scales, broadcast or not
    return out, -logdet if inverse else logdet


def _fused(mu, sigma, v, eps, inverse: bool):
    from .fused.encoder_layer import OP
    from .fused.rowwise import rowwise

    # density direction: the gradient of mu is the incoming one
    return rowwise(OP, (mu, sigma, v), (float(eps), 0.0), int(inverse), passthrough=(not inverse,))


def encoder_layer(mu, sigma, core, eps: float):
    """Density direction core -> latent: ``(mu + (sigma + eps) * core, sum log(sigma + eps))``."""
    batch_shape("encoder_layer", mu, sigma, core)
    if wants_triton(mu, sigma, core):
        return _fused(mu, sigma, core, eps, False)
    return encoder_layer_reference(mu, sigma, core, eps)


def encoder_layer_inverse(mu, sigma, z, eps: float):
    """Sampling direction latent -> core: ``((z - mu) / (sigma + eps), -sum log(sigma + eps))``."""
    batch_shape("encoder_layer_inverse", mu, sigma, z)
    if wants_triton(mu, sigma, z):
        return _fused(mu, sigma, z, eps, True)
    return encoder_layer_reference(mu, sigma, z, eps, inverse=True)
