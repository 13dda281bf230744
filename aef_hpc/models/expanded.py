"""The expanded family, AEF-linear (method.md §1.4): maximum likelihood in an extended space.

A core ``w`` (d entries) joins the image; ``(y, w) -> (z0, delta)`` is a bijection with

    w' = g^-1(w);  z = mu_E(y) + (sigma_E(y) + eps) w';  delta = (y - mu_D(z)) / (sigma_D(z) + eps);  z0 = h^-1(z)

Training maximises ``log p(x, w)`` at the deterministic expansion point ``w = W vec(y) + b`` (``loss`` is
this extended-space NLL, *not* an NLL of x). ``marginal_log_prob`` importance-samples
``p(x) = E_q[p(x, w) / q(w | x)]`` with ``q = N(W vec(y) + b, proposal_std^2 I)``, including ``- log K``.
"""

import math

import torch
from torch import nn

from ..errors import ModelError
from .aef import AutoencoderWithinFlow
from .base import Embedding, importance_log_weights, log_mean_exp, standard_normal_log_prob, tile


class ExpandedAEF(AutoencoderWithinFlow):
    loss_name = "extended_nll"

    def __init__(
        self, image_shape, latent_dim, encoder, decoder, prior_flow, core_flow, alpha, proposal_std: float = 1.0
    ):
        super().__init__(image_shape, latent_dim, encoder, decoder, prior_flow, core_flow, alpha)
        self.expansion = nn.Linear(self.num_dims, latent_dim)
        self.register_buffer("proposal_std", torch.tensor(float(proposal_std)))

    def expansion_point(self, y: torch.Tensor) -> torch.Tensor:
        """``W vec(y) + b`` for preprocessed images ``y``."""
        return self.expansion(y.flatten(1))

    def embed(self, x, w: torch.Tensor | None = None, deviations: bool = True) -> Embedding:
        """``(x, w) -> (z0, deviations, log p(x, w))``; ``w`` defaults to the expansion point."""
        y, log_det, mu_e, sigma_e = self._context(x)
        core = self.expansion_point(y) if w is None else w
        return self._embed_core(y, log_det, mu_e, sigma_e, core, deviations=deviations)

    def loss(self, x, noise=None):  # deterministic: no noise drawn
        return -self.embed(x, deviations=False).log_prob

    def encode(self, x):
        return self.embed(x, deviations=False).z0

    def invert(self, latent, deviations):
        """Inverse of ``embed``: ``(z0, deviations) -> (x, w)``, through the preprocessed image ``y`` (the decoder's
        outputs, unclamped, may lie just outside [0, 1] in pixel space)."""
        z, _ = self.prior_flow.inverse(self.check_latent(latent, deviations))
        y = self._decoder_output(z, deviations)
        return self.preprocess.inverse(y)[0], self._core_from(y, z)

    def marginal_log_prob(
        self, x, num_samples=128, chunk_size=32, generator=None, proposal_std=None, subtract_log_k=True
    ):
        """Importance-sampling estimate of ``log p(x)`` with ``K = num_samples`` and ``- log K``."""
        log_w = self.log_importance_weights(x, num_samples, chunk_size, generator, proposal_std)
        return log_mean_exp(log_w, subtract_log_k)

    def log_importance_weights(self, x, num_samples=128, chunk_size=32, generator=None, proposal_std=None):
        """``[K, B]``: ``log p(x, w_k) - log q(w_k | x)`` with ``w_k ~ N(W vec(y) + b, proposal_std^2 I)``."""
        std = float(self.proposal_std if proposal_std is None else proposal_std)
        if not std > 0:
            raise ModelError(f"proposal_std={std} must be positive")
        context = self._context(x)
        mean = self.expansion_point(context[0])
        batch = x.shape[0]

        def log_weights(noise):
            k = noise.shape[0]
            w = (mean + std * noise).reshape(k * batch, -1)
            log_p = self._embed_core(*tile(context, k), w, deviations=False).log_prob.view(k, batch)
            log_q = standard_normal_log_prob(noise.reshape(k * batch, -1)).view(k, batch) - self.latent_dim * math.log(
                std
            )
            return log_p - log_q

        return importance_log_weights(log_weights, (batch, self.latent_dim), num_samples, chunk_size, generator, mean)


@torch.no_grad()
def select_proposal_std(
    model: ExpandedAEF,
    batches,
    stds=(2.0, 1.0, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001, 1e-4),
    num_samples=64,
    chunk_size=64,
    generator=None,
):
    """Grid-search ``proposal_std`` on validation batches (method.md §1.4); store and return the best.

    Returns ``(best_std, {std: mean IS log-likelihood})``; a std whose estimate is not finite on any batch
    scores ``-inf``. Raises ``ModelError`` if no std gives a finite estimate.
    """
    scores = {}
    for std in stds:
        values = [model.marginal_log_prob(x, num_samples, chunk_size, generator, proposal_std=std) for x in batches]
        values = torch.cat(values)
        scores[std] = values.mean().item() if torch.isfinite(values).all() else -math.inf
    best = max(scores, key=scores.get)
    if not math.isfinite(scores[best]):
        raise ModelError(f"no proposal std in {list(stds)} gave a finite likelihood estimate: widen the grid")
    model.proposal_std.fill_(best)
    return best, scores
