"""Model zoo and its one public factory, ``build_model``."""

import math

from ..errors import ModelError
from ..flows import build_flow
from ..nets import build_networks
from .base import Embedding, GenerativeAutoencoder, check_count, standard_normal_log_prob
from .expanded import ExpandedAEF, select_proposal_std
from .masks import MASKS, build_mask
from .partition import PartitionAEF
from .vae import IWAE, VAE

PARTITION_MASKS = {"aef-center": "center", "aef-corner": "corner", "aef-checkerboard": "checkerboard"}
MODELS = (*PARTITION_MASKS, "aef-linear", "vae", "iwae")
FLOW_OPTIONS = {"flow_hidden": "hidden", "flow_layers": "num_layers", "flow_blocks": "num_blocks"}
MODEL_OPTIONS = {"aef-linear": ("proposal_std",), "iwae": ("num_samples",)}


def build_model(
    name: str,
    image_shape,
    latent_dim: int,
    architecture: str = "small",
    decoder_variance: str = "independent",
    prior_flow: str = "none",
    posterior_flow: str = "none",
    alpha: float = 1e-6,
    **options,
) -> GenerativeAutoencoder:
    """Build ``aef-center | aef-corner | aef-checkerboard | aef-linear | vae | iwae``.

    ``posterior_flow`` is the core flow ``g`` of an AEF and the posterior flow of a VAE; both flows are kinds of
    ``aef_hpc.flows.FLOWS`` (none | maf | iaf | realnvp). ``options`` may hold ``flow_hidden`` (256), ``flow_layers``
    (4), ``flow_blocks`` (2), the network widths ``hidden_channels`` (small), ``width`` (big) or ``hidden`` (mlp),
    ``proposal_std``
    (aef-linear) and ``num_samples`` (iwae).
    Raises ``ModelError`` for unknown names and impossible combinations.
    """
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
        raise ModelError(f"image_shape must be three positive ints (C, H, W), got {image_shape!r}")
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise ModelError(f"latent_dim must be a positive int, got {latent_dim!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha < 0.5:
        raise ModelError(f"alpha={alpha!r} must be a number in [0, 0.5)")
    std = options.get("proposal_std", 1.0)
    if isinstance(std, bool) or not isinstance(std, int | float) or not 0 < std < math.inf:
        raise ModelError(f"proposal_std={std!r} must be a positive finite number")
    if "num_samples" in options:
        check_count("num_samples", options["num_samples"])
    if name in PARTITION_MASKS:
        build_mask(PARTITION_MASKS[name], shape, latent_dim)  # fail on an impossible mask before building nets
    if name == "aef-linear" and latent_dim > math.prod(shape):
        raise ModelError(
            f"latent_dim={latent_dim} is larger than the image ({math.prod(shape)} values): an AEF's latent is at most "
            "the image's size"
        )
    for key in ("flow_hidden", "flow_layers", "flow_blocks", "hidden", "hidden_channels", "width"):
        value = options.get(key)
        low = 0 if key == "flow_blocks" else 1
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ModelError(f"{key}={value!r} must be an int of at least {low}")
    flow_args = {FLOW_OPTIONS[k]: options.pop(k) for k in list(options) if k in FLOW_OPTIONS}
    model_args = {k: options.pop(k) for k in MODEL_OPTIONS.get(name, ()) if k in options}
    encoder, decoder = build_networks(architecture, shape, latent_dim, decoder_variance, **options)
    prior = build_flow(prior_flow, latent_dim, **flow_args)
    posterior = build_flow(posterior_flow, latent_dim, **flow_args)
    common = (shape, latent_dim, encoder, decoder, prior, posterior, alpha)
    if name in PARTITION_MASKS:
        return PartitionAEF(*common, mask=PARTITION_MASKS[name])
    if name == "aef-linear":
        return ExpandedAEF(*common, **model_args)
    return (IWAE if name == "iwae" else VAE)(*common, **model_args)


__all__ = [
    "MASKS",
    "MODELS",
    "IWAE",
    "VAE",
    "Embedding",
    "ExpandedAEF",
    "GenerativeAutoencoder",
    "PartitionAEF",
    "build_mask",
    "build_model",
    "select_proposal_std",
    "standard_normal_log_prob",
]
