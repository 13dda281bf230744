"""What both AEF families share: the core flow and the encoder/decoder affine layers around it.

Density direction, given the encoder's input (shell or full image), the decoder's target and a core:
``c' = g^-1(core)``, ``z = mu_E + (sigma_E + eps) c'``, ``delta = (target - mu_D(z)) / (sigma_D(z) + eps)``,
``z0 = h^-1(z)``; the log-density adds the standard-normal terms of ``z0`` and ``delta`` (on ``mask``) to every
layer's log-det.
"""

import torch

from .. import kernels
from ..flows import Bijection
from .base import Embedding, GenerativeAutoencoder, standard_normal_log_prob


class AutoencoderWithinFlow(GenerativeAutoencoder):
    """Base of ``PartitionAEF`` and ``ExpandedAEF``; ``core_flow`` is the flow g on the core."""

    def __init__(self, image_shape, latent_dim, encoder, decoder, prior_flow, core_flow: Bijection, alpha):
        super().__init__(image_shape, latent_dim, encoder, decoder, prior_flow, alpha)
        self.core_flow = core_flow

    def _embed_core(self, target, log_det, mu_e, sigma_e, core, mask=None, deviations=True) -> Embedding:
        """``core -> (z0, deviations, log-density)``; ``log_det`` carries the terms computed before. Without
        ``deviations`` (the loss path) the decoder layer writes none: ``Embedding.deviations`` is ``None``."""
        core, ld_core = self.core_flow(core)
        z, ld_enc = kernels.encoder_layer(mu_e, sigma_e, core, self.eps)
        mu_d, r_d = self.decoder(z)
        if deviations:
            delta, log_p = kernels.decoder_layer(target, mu_d, r_d, mask, self.eps)
        else:
            delta, log_p = None, kernels.decoder_log_prob(target, mu_d, r_d, mask, self.eps)
        z0, ld_prior = self.prior_flow(z)
        log_prob = standard_normal_log_prob(z0) + log_p + log_det + ld_core + ld_enc + ld_prior
        return Embedding(z0, delta, log_prob)

    def _core_from(self, encoder_input: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Invert the encoder layer and the core flow: ``core = g((z - mu_E) / (sigma_E + eps))``."""
        mu_e, sigma_e = self.encoder(encoder_input)
        core, _ = kernels.encoder_layer_inverse(mu_e, sigma_e, z, self.eps)
        return self.core_flow.inverse(core)[0]
