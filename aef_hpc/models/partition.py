"""The partition family (AEF-center, AEF-corner, checkerboard): exact maximum likelihood (method.md §1.2).

After preprocessing, a mask splits ``y`` into the core ``y_c`` (d entries, row-major order) and the shell
``y_s`` (the image with the core zeroed). The triangular bijection ``y -> (z0, delta_shell)`` is

    c' = g^-1(y_c);  z = mu_E(y_s) + (sigma_E(y_s) + eps) c';  delta = (y_s - mu_D(z)) / (sigma_D(z) + eps);
    z0 = h^-1(z)

so ``log p(x)`` is the sum of the standard-normal densities of ``z0`` and the shell deviations and of every
layer's log-det (preprocessing, core flow, encoder layer, decoder layer on the shell, prior flow).
"""

import torch

from .aef import AutoencoderWithinFlow
from .base import Embedding
from .masks import build_mask


class PartitionAEF(AutoencoderWithinFlow):
    loss_name = "nll"
    exact_likelihood = True

    def __init__(self, image_shape, latent_dim, encoder, decoder, prior_flow, core_flow, alpha, mask: str = "center"):
        super().__init__(image_shape, latent_dim, encoder, decoder, prior_flow, core_flow, alpha)
        self.mask_kind = mask
        self.register_buffer("mask", build_mask(mask, self.image_shape, latent_dim), persistent=False)
        # the core's flat positions, row-major: index_select/index_copy need no host sync (a boolean mask does)
        self.register_buffer("core_index", self.mask.flatten().nonzero().flatten(), persistent=False)

    @property
    def shell(self) -> torch.Tensor:
        """1 on shell entries, 0 on the core, ``[C, H, W]``."""
        return (~self.mask).to(next(self.parameters()).dtype)

    def embed(self, x: torch.Tensor, deviations: bool = True) -> Embedding:
        """``x -> (z0, shell deviations, log p(x))``; deviations are 0 on the core (``None`` without
        ``deviations``, the loss path)."""
        y, log_det = self.preprocess(self.check_input(x))
        core = y.flatten(1).index_select(1, self.core_index)
        shell_mask = self.shell
        y_shell = y * shell_mask
        mu_e, sigma_e = self.encoder(y_shell)
        return self._embed_core(y_shell, log_det, mu_e, sigma_e, core, shell_mask, deviations)

    def log_prob(self, x):
        return self.embed(x, deviations=False).log_prob

    def loss(self, x, noise=None):  # deterministic: no noise drawn
        return -self.log_prob(x)

    def marginal_log_prob(self, x, num_samples: int = 128, chunk_size: int = 32, generator=None):
        """Exact: equals ``log_prob`` (the sampling arguments are accepted for a uniform interface)."""
        return self.log_prob(x)

    def encode(self, x):
        return self.embed(x, deviations=False).z0

    def decode(self, latent, deviations=None):
        """Inverse map: shell from the decoder, core by inverting the encoder layer on that shell."""
        z, _ = self.prior_flow.inverse(self.check_latent(latent, deviations))
        y_shell = self._decoder_output(z, deviations) * self.shell
        core = self._core_from(y_shell, z)
        flat = y_shell.flatten(1).index_copy(1, self.core_index, core)
        return self.preprocess.inverse(flat.view_as(y_shell))[0]
