"""The interface every generative autoencoder shares, and the logic they have in common.

All per-sample outputs are ``[B]`` tensors in nats; inputs are dequantized images in [0, 1] of shape
``[B, C, H, W]``. Latents live in the prior's base space (standard normal), so ``sample`` is ``decode`` of
Gaussian noise for every model.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from .. import kernels
from ..errors import DataError, ModelError
from ..flows import ActNorm, Bijection, Composite, LogitPreprocess
from ..noise import KeyedNoise

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Embedding(NamedTuple):
    """The density-direction image of an input: prior base ``z0 [B, d]``, decoder deviations ``[B, C, H, W]``
    (0 where they are not part of the bijection; ``None`` where not asked for) and the log-density ``[B]``."""

    z0: torch.Tensor
    deviations: torch.Tensor | None
    log_prob: torch.Tensor


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """Sum of ``log N(z_i; 0, 1)`` over all non-batch dims."""
    return kernels.row_sum(-0.5 * z.square() - _HALF_LOG_2PI)


def tile(tensors, k: int) -> list[torch.Tensor]:
    """Repeat each ``[B, ...]`` tensor ``k`` times along the batch: ``[k * B, ...]``, sample-major."""
    return [t.unsqueeze(0).expand(k, *t.shape).reshape(k * t.shape[0], *t.shape[1:]) for t in tensors]


def check_count(name: str, value) -> int:
    """``value`` must be an int (not a bool) of at least 1, else ``ModelError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{name}={value!r} must be an int of at least 1")
    return value


def draw_normal(generator: torch.Generator | KeyedNoise | None, shape: tuple[int, ...], like: torch.Tensor):
    """``N(0, 1)`` of ``shape = [k, B, ...]`` in ``like``'s dtype and device: from a ``KeyedNoise`` (each image's
    draws keyed by its id: independent of its batch, rank and worker), a ``torch.Generator``, or the global RNG."""
    if isinstance(generator, KeyedNoise):
        if len(generator.ids) != shape[1]:
            raise ModelError(f"the noise is keyed for {len(generator.ids)} images but the batch has {shape[1]}")
        return generator.normal(shape[0], shape[2:]).to(like)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ModelError(f"generator must be a torch.Generator or KeyedNoise, got {type(generator).__name__}")
    device = generator.device if generator is not None else like.device
    return torch.randn(*shape, generator=generator, device=device).to(like)


def importance_log_weights(
    log_weights: Callable[[torch.Tensor], torch.Tensor],
    noise_shape: tuple[int, ...],
    num_samples: int,
    chunk_size: int,
    generator: torch.Generator | KeyedNoise | None,
    like: torch.Tensor,
) -> torch.Tensor:
    """``[K, B]`` log-weights ``log p(x, w_k) - log q(w_k | x)`` from ``log_weights(noise[k, B, ...]) -> [k, B]``,
    ``chunk_size`` draws at a time. All ``K`` noise draws are made first, so nothing depends on ``chunk_size``."""
    check_count("num_samples", num_samples)
    check_count("chunk_size", chunk_size)
    noise = draw_normal(generator, (num_samples, *noise_shape), like)
    return torch.cat([log_weights(noise[i : i + chunk_size]) for i in range(0, num_samples, chunk_size)])


def log_mean_exp(log_w: torch.Tensor, subtract_log_k: bool = True) -> torch.Tensor:
    r""":math:`\log\frac1K\sum_k w_k` over dim 0; ``subtract_log_k=False`` reproduces the reference code's
    missing ``-log K`` (for parity only)."""
    estimate = torch.logsumexp(log_w, dim=0)
    return estimate - math.log(log_w.shape[0]) if subtract_log_k else estimate


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    r"""Kish's :math:`(\sum_k w_k)^2 / \sum_k w_k^2` per column of ``[K, B]`` log-weights: 1 (one weight
    dominates, an unreliable estimate) to K (equal weights)."""
    return torch.exp(2 * torch.logsumexp(log_w, dim=0) - torch.logsumexp(2 * log_w, dim=0))


class GenerativeAutoencoder(nn.Module):
    """Shared parts: logit + ActNorm preprocessing, encoder, decoder, prior flow, input checks, sampling."""

    #: what ``loss`` computes, used as its name in logs
    loss_name = "loss"
    #: whether ``log_prob`` is exact (partition family) or ``log_importance_weights`` estimates it
    exact_likelihood = False
    #: epsilon added to every predicted scale
    eps = 1e-5

    def __init__(
        self, image_shape, latent_dim: int, encoder: nn.Module, decoder: nn.Module, prior_flow: Bijection, alpha: float
    ):
        super().__init__()
        self.image_shape = tuple(int(v) for v in image_shape)
        self.latent_dim = int(latent_dim)
        self.preprocess = Composite(LogitPreprocess(alpha), ActNorm(self.image_shape[0]))
        self.encoder = encoder
        self.decoder = decoder
        self.prior_flow = prior_flow

    @property
    def num_dims(self) -> int:
        return math.prod(self.image_shape)

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Raise ``DataError`` unless ``x`` is a floating ``[B, *image_shape]`` batch (range: preprocessing)."""
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise DataError(
                f"expected a floating-point tensor of images, got {type(x).__name__} {getattr(x, 'dtype', '')}"
            )
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise DataError(
                f"expected images of shape [B, {', '.join(map(str, self.image_shape))}], got {list(x.shape)}: "
                "check model.image_shape against the data"
            )
        if x.shape[0] == 0:
            raise DataError("the batch is empty: pass at least one image")
        dtype = next(self.parameters()).dtype
        if x.dtype != dtype:
            raise DataError(
                f"the images are {x.dtype} but the model's parameters are {dtype}: convert one to the other "
                f"(x.to({dtype}) or model.to({x.dtype}))"
            )
        return x

    def check_latent(self, latent: torch.Tensor, deviations: torch.Tensor | None = None) -> torch.Tensor:
        """Raise ``DataError`` unless ``latent`` is ``[B, latent_dim]`` in the parameters' dtype (and
        ``deviations``, when given, ``[B, *image_shape]``)."""
        dtype = next(self.parameters()).dtype
        if not torch.is_tensor(latent) or latent.dim() != 2 or latent.shape[1] != self.latent_dim:
            shape = list(latent.shape) if torch.is_tensor(latent) else type(latent).__name__
            raise DataError(f"expected latents of shape [B, {self.latent_dim}], got {shape}")
        if latent.dtype != dtype or latent.shape[0] == 0:
            raise DataError(f"expected a non-empty {dtype} batch of latents, got {latent.dtype} {list(latent.shape)}")
        if deviations is not None and (
            not torch.is_tensor(deviations)
            or deviations.dtype != dtype
            or tuple(deviations.shape) != (latent.shape[0], *self.image_shape)
        ):
            raise DataError(
                f"deviations {getattr(deviations, 'dtype', type(deviations).__name__)} "
                f"{list(getattr(deviations, 'shape', []))} do not match {latent.shape[0]} latents of {dtype} and "
                f"images of shape {list(self.image_shape)}"
            )
        return latent

    def _context(self, x: torch.Tensor):
        """``(y, preprocessing log-det, mu_E, sigma_E)`` for a full-image encoder."""
        y, log_det = self.preprocess(self.check_input(x))
        mu_e, sigma_e = self.encoder(y)
        return y, log_det, mu_e, sigma_e

    def _noise_like(self, *shape: int, generator: torch.Generator | None) -> torch.Tensor:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ModelError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        param = next(self.parameters())
        device = generator.device if generator is not None else param.device
        return torch.randn(*shape, generator=generator, device=device).to(param)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation, an explicit step before training: every ActNorm (preprocessing and
        inside the flows) is set so that the first pass of the training objective over ``x`` comes out
        normalised, in whichever direction that pass runs through it. Raises ``DataError`` for a batch without
        spread (e.g. constant images); until called, every ActNorm is the identity."""
        norms = {name: m for name, m in self.named_modules() if isinstance(m, ActNorm)}
        before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in norms.items()}
        for name, norm in norms.items():
            norm.arm(f"ActNorm {name}")
        training = self.training
        try:
            self.train()
            self.loss(self.check_input(x))
        except BaseException:
            for name, norm in norms.items():  # all or nothing: a failed initialisation changes no layer
                norm.load_state_dict(before[name])
            raise
        finally:
            for norm in norms.values():
                norm.disarm()
            self.train(training)
        missed = [name for name, norm in norms.items() if not bool(norm.initialized)]
        if missed:
            raise ModelError(f"initialize: ActNorm {missed[0]} is not on the training objective's path")

    # -- interface ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, noise: KeyedNoise | None = None) -> torch.Tensor:
        """``loss(x, noise)``: the per-sample objective ``[B]``. Engines call the module (DDP's and DeepSpeed's
        wrappers hook ``forward``: gradient reduction, ZeRO-3 parameter gathering), never ``loss`` directly."""
        return self.loss(x, noise)

    def loss(self, x: torch.Tensor, noise: KeyedNoise | None = None) -> torch.Tensor:  # pragma: no cover
        """The training objective per sample; ``loss_name`` says which it is. ``noise``: where a stochastic
        objective (VAE, IWAE) draws its posterior samples (``KeyedNoise``: by image, so N ranks compute what one
        process does; ``None``: the global RNG); the AEF objectives are deterministic and ignore it."""
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-likelihood; only the partition family has one."""
        raise ModelError(
            f"{type(self).__name__} has no exact log-likelihood: use marginal_log_prob (importance sampling)"
        )

    def log_importance_weights(self, x, num_samples: int = 128, chunk_size: int = 32, generator=None):
        """``[K, B]`` importance log-weights of ``log p(x)`` (models without an exact likelihood)."""
        raise NotImplementedError  # pragma: no cover

    def marginal_log_prob(self, x, num_samples: int = 128, chunk_size: int = 32, generator=None):
        """Importance-sampling estimate ``log mean_k w_k`` with ``K = num_samples``, memory bounded by
        ``chunk_size``; exact models return the exact value."""
        return log_mean_exp(self.log_importance_weights(x, num_samples, chunk_size, generator))

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def decode(self, latent: torch.Tensor, deviations: torch.Tensor | None = None) -> torch.Tensor:
        """Prior base ``z0`` -> image: ``z = h(z0)``, ``y = mu_D(z) [+ (sigma_D + eps) * deviations]``."""
        z, _ = self.prior_flow.inverse(self.check_latent(latent, deviations))
        y = self._decoder_output(z, deviations)
        return self.preprocess.inverse(y)[0]

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator=None, deviations: bool = False) -> torch.Tensor:
        """``decode(T * N(0, I))``; ``deviations=True`` draws each sample its own ``T * N(0, I)`` deviations."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ModelError(f"sample: n={n!r} must be a positive int")
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 < temperature < math.inf:
            raise ModelError(f"sample: temperature={temperature!r} must be a positive finite number")
        z0 = temperature * self._noise_like(n, self.latent_dim, generator=generator)
        delta = temperature * self._noise_like(n, *self.image_shape, generator=generator) if deviations else None
        return self.decode(z0, delta)

    def _decoder_output(self, z: torch.Tensor, deviations: torch.Tensor | None) -> torch.Tensor:
        mu, r = self.decoder(z)
        if deviations is None:
            return mu
        return kernels.decoder_layer_inverse(deviations, mu, r, self.eps)
