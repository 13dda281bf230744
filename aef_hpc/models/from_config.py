"""Builds a model from the ``model`` section of the config (floor 0 config -> floor 2 model)."""

from ..config import ModelConfig
from . import GenerativeAutoencoder, build_model


def model_from_config(cfg: ModelConfig, image_shape) -> GenerativeAutoencoder:
    """``build_model`` with the config's fields; model-specific options only where they apply."""
    extra = {}
    if cfg.name == "aef-linear":
        extra["proposal_std"] = cfg.proposal_std
    if cfg.name == "iwae":
        extra["num_samples"] = cfg.iwae_samples
    if cfg.width is not None:
        extra["width"] = cfg.width
    return build_model(
        cfg.name,
        tuple(image_shape),
        cfg.latent_dim,
        architecture=cfg.architecture,
        decoder_variance=cfg.decoder_variance,
        prior_flow=cfg.prior_flow,
        posterior_flow=cfg.posterior_flow,
        alpha=cfg.alpha,
        flow_hidden=cfg.flow_hidden,
        flow_layers=cfg.flow_layers,
        flow_blocks=cfg.flow_blocks,
        **extra,
    )
