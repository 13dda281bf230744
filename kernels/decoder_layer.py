r"""AEF decoder affine layer and Gaussian log-density in one op.

With :math:`\sigma = \mathrm{softplus}(r)` and deviations :math:`\delta = (y-\mu)/(\sigma+\epsilon)`, the
per-row output is :math:`\sum_{i\in\mathcal M} \log\mathcal N(\delta_i; 0, 1) - \log(\sigma_i+\epsilon)`,
which is both the decoder layer's density-direction log-det plus the base density of its output, and the
Gaussian log-likelihood :math:`\log\mathcal N(y; \mu, \sigma+\epsilon)` that a VAE uses.

Triton (``fused/decoder_layer.py``): one pass reads ``y, mu, r`` (and the mask) and writes the row sums, plus the
deviations only for ``decoder_layer``: the loss path (``decoder_log_prob``) writes none, reads ``r`` once when it
is broadcast over the batch (``independent`` variance) and computes no gradient for it when it has none
(``fixed``). The backward reads the same inputs again instead of saved intermediates.
"""

import math

import torch.nn.functional as F

from ._rows import batch_shape, row_sum
from .dispatch import wants_triton

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def decoder_layer_reference(y, mu, r, mask=None, eps: float = 1e-5):
    scale = F.softplus(r) + eps
    deviation = (y - mu) / scale
    terms = -0.5 * deviation.square() - _HALF_LOG_2PI - scale.log()
    if mask is not None:
        deviation = deviation * mask
        terms = terms * mask
    return deviation, row_sum(terms)


def _fused(y, mu, r, mask, eps, want_out):
    from .fused.decoder_layer import OP
    from .fused.rowwise import rowwise

    return rowwise(OP, (y, mu, r), (float(eps), _HALF_LOG_2PI), want_out=want_out, mask=mask)


def _triton(y, mu, r, mask) -> bool:
    """Shapes checked; a mask that needs a gradient (a learned weighting) takes the reference, which gives it one."""
    batch_shape("decoder_layer", y, mu, r, mask)
    return wants_triton(y, mu, r) and not (mask is not None and mask.requires_grad)


def decoder_layer(y, mu, r, mask=None, eps: float = 1e-5):
    """Return ``(deviation, logp[B])``; ``mask`` (broadcastable, 1 = counted) zeroes the rest.

    Entries outside the mask get deviation 0 and add nothing to ``logp``.
    """
    if _triton(y, mu, r, mask):
        return _fused(y, mu, r, mask, eps, True)
    return decoder_layer_reference(y, mu, r, mask, eps)


def decoder_log_prob(y, mu, r, mask=None, eps: float = 1e-5):
    """``logp[B]`` of ``decoder_layer`` without the deviations: the training and evaluation path."""
    if _triton(y, mu, r, mask):
        return _fused(y, mu, r, mask, eps, False)
    return decoder_layer_reference(y, mu, r, mask, eps)[1]


def softplus_inverse(sigma: float) -> float:
    """The pre-activation ``r`` with ``softplus(r) == sigma``."""
    return sigma + math.log(-math.expm1(-sigma))


def decoder_layer_inverse(deviation, mu, r, eps: float = 1e-5):
    """Sampling direction: ``y = mu + (softplus(r) + eps) * deviation`` (generation only; eager)."""
    return mu + (F.softplus(r) + eps) * deviation
