r"""AEF decoder affine layer and Gaussian log-density in one op.

With :math:`\sigma = \mathrm{softplus}(r)` and deviations :math:`\delta = (y-\mu)/(\sigma+\epsilon)`, the
per-row output is :math:`\sum_{i\in\mathcal M} \log\mathcal N(\delta_i; 0, 1) - \log(\sigma_i+\epsilon)`,
which is both the decoder layer's density-direction log-det plus the base density of its output, and the
Gaussian log-likelihood :math:`\log\mathcal N(y; \mu, \sigma+\epsilon)` that a VAE uses.
"""

import math

import torch.nn.functional as F

from ._rows import row_sum

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def decoder_layer(y, mu, r, mask=None, eps: float = 1e-5):
    """Return ``(deviation, logp[B])``; ``mask`` (broadcastable, 1 = counted) zeroes the rest.

    Entries outside the mask get deviation 0 and add nothing to ``logp``.
    """
    scale = F.softplus(r) + eps
    deviation = (y - mu) / scale
    terms = -0.5 * deviation.square() - _HALF_LOG_2PI - scale.log()
    if mask is not None:
        deviation = deviation * mask
        terms = terms * mask
    return deviation, row_sum(terms)


def softplus_inverse(sigma: float) -> float:
    """The pre-activation ``r`` with ``softplus(r) == sigma``."""
    return sigma + math.log(-math.expm1(-sigma))


def decoder_layer_inverse(deviation, mu, r, eps: float = 1e-5):
    """Sampling direction: ``y = mu + (softplus(r) + eps) * deviation``."""
    return mu + (F.softplus(r) + eps) * deviation
