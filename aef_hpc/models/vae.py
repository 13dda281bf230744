r"""VAE and IWAE baselines with the same networks, preprocessing and flows (method.md §1.6).

For one posterior draw :math:`\epsilon \sim N(0, I)`: :math:`z_b = \mu_E + (\sigma_E + \epsilon_{num})\epsilon`,
:math:`z = f(z_b)` (posterior flow, sampling direction) and the log-weight

    log w = log N(y; mu_D(z), sigma_D(z) + eps) + log p(z) - log q(z | x) + l_pre(x)

The VAE trains on the single-sample ELBO ``E[log w]``, the IWAE on ``log mean_k w_k``; both estimate
``log p(x)`` by importance sampling with the same proposal used in training (the reference code's
proposal dropped the epsilon, method.md §5.4).
"""

from .. import kernels
from ..flows import Bijection
from .base import (
    GenerativeAutoencoder,
    check_count,
    draw_normal,
    importance_log_weights,
    standard_normal_log_prob,
    tile,
)


class VAE(GenerativeAutoencoder):
    loss_name = "neg_elbo"
    eps = 1e-6

    def __init__(self, image_shape, latent_dim, encoder, decoder, prior_flow, posterior_flow: Bijection, alpha):
        super().__init__(image_shape, latent_dim, encoder, decoder, prior_flow, alpha)
        self.posterior_flow = posterior_flow

    def _log_weight(self, y, log_det, mu_e, sigma_e, noise):
        z_base, ld_enc = kernels.encoder_layer(mu_e, sigma_e, noise, self.eps)
        z, ld_post = self.posterior_flow.inverse(z_base)
        log_q = standard_normal_log_prob(noise) - ld_enc - ld_post
        mu_d, r_d = self.decoder(z)
        log_lik = kernels.decoder_log_prob(y, mu_d, r_d, None, self.eps)
        u, ld_prior = self.prior_flow(z)
        return log_lik + standard_normal_log_prob(u) + ld_prior - log_q + log_det

    def _log_weights(self, context, noise):
        """``noise [k, B, d] -> log w [k, B]``, the context tiled ``k`` times."""
        k, batch = noise.shape[:2]
        return self._log_weight(*tile(context, k), noise.reshape(k * batch, -1)).view(k, batch)

    def elbo(self, x, num_samples: int = 1, generator=None):
        """Monte-Carlo ELBO ``mean_k log w_k`` (a lower bound on ``log p(x)`` in expectation); the draws from
        ``generator`` (a ``torch.Generator``, ``KeyedNoise`` or ``None``: the global RNG)."""
        check_count("num_samples", num_samples)
        context = self._context(x)
        noise = draw_normal(generator, (num_samples, x.shape[0], self.latent_dim), next(self.parameters()))
        return self._log_weights(context, noise).mean(dim=0)

    def loss(self, x, noise=None):
        return -self.elbo(x, generator=noise)

    def log_importance_weights(self, x, num_samples=128, chunk_size=32, generator=None):
        """``[K, B]`` log-weights of ``K = num_samples`` posterior draws, ``chunk_size`` at a time."""
        context = self._context(x)
        return importance_log_weights(
            lambda noise: self._log_weights(context, noise),
            (x.shape[0], self.latent_dim),
            num_samples,
            chunk_size,
            generator,
            context[2],
        )

    def encode(self, x):
        """The posterior mean pushed through the posterior flow, in the prior's base space."""
        _, _, mu_e, _ = self._context(x)
        z, _ = self.posterior_flow.inverse(mu_e)
        return self.prior_flow(z)[0]


class IWAE(VAE):
    """Trains on the K-sample importance-weighted bound ``log mean_k w_k`` (Burda et al. 2016)."""

    loss_name = "neg_iwae_bound"

    def __init__(self, *args, num_samples: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_samples = num_samples

    def loss(self, x, noise=None):
        return -self.marginal_log_prob(x, self.num_samples, self.num_samples, noise)
