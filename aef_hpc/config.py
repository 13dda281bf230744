"""The typed configuration schema (omegaconf structured configs) and its loader.

Every default lives here; a YAML file overrides it and ``key=value`` arguments override both. Unknown keys,
wrong types and impossible values raise ``ConfigError`` naming the key.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError


@dataclass
class ModelConfig:
    name: str = "aef-center"
    """aef-center | aef-corner | aef-checkerboard | aef-linear | vae | iwae"""
    architecture: str = "small"
    """small (two convs, H and W divisible by 4) | big (VDVAE-like, square power of two) | mlp (any shape)"""
    latent_dim: int = 2
    decoder_variance: str = "independent"
    """fixed | independent | dependent"""
    prior_flow: str = "none"
    """none | maf | iaf"""
    posterior_flow: str = "none"
    """core flow of an AEF, posterior flow of a VAE: none | maf | iaf"""
    alpha: float = 1e-6
    """logit squeeze: 1e-6 for MNIST-like data, 0.05 for colour images (method.md §1.1)"""
    flow_hidden: int = 256
    flow_layers: int = 4
    flow_blocks: int = 2
    proposal_std: float = 1.0
    """aef-linear importance-sampling proposal std (re-selected on validation data if eval.select_proposal_std)"""
    iwae_samples: int = 10
    """K of the IWAE training bound"""
    image_shape: Optional[list[int]] = None
    """expected [C, H, W]; null takes it from the data, a value must match the data or training does not start"""
    bit_depth: Optional[int] = None
    """expected bits per pixel value; null takes it from the data (digits: 5, i.e. 17 levels)"""


@dataclass
class DataConfig:
    name: str = "digits"
    """the embedded dataset: scikit-learn's 1,797 handwritten digits, 1x8x8, 17 levels (used when path is null)"""
    path: Optional[str] = None
    """shards written by `aef-hpc shards`: a folder, a URL template with {shard} (e.g. 'pipe:cat /data/{shard}'),
    or a brace pattern naming a subset (e.g. /data/train-{000000..000007}.tar)"""
    manifest: Optional[str] = None
    """manifest.json of remote shards; by default the one in the shards' folder"""
    num_workers: int = 0
    """data-loading worker processes per rank (shards)"""
    shuffle_buffer: int = 1000
    """samples in each worker's shuffle buffer (shards, training)"""
    seed: int = 3
    """seed of the embedded dataset's train/validation/test split and of the shard order"""
    val_fraction: float = 0.1
    test_fraction: float = 0.2


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    grad_clip: float = 200.0
    seed: int = 0
    """seeds model init, batch order and dequantization noise"""
    val_every: int = 250
    log_every: int = 10
    device: str = "auto"
    """auto (cuda if available) | cpu | cuda | cuda:N"""


@dataclass
class EvalConfig:
    num_samples: int = 128
    """K of the importance-sampling marginal likelihood (aef-linear, vae, iwae)"""
    chunk_size: int = 32
    """importance samples evaluated at once; bounds memory"""
    batch_size: int = 256
    select_proposal_std: bool = True
    """aef-linear: grid-search the proposal std on validation data before the test likelihood"""
    grid_samples: int = 64
    temperature: float = 1.0
    seed: int = 0


@dataclass
class RunConfig:
    name: str = "digits"
    out_dir: str = "runs"
    """the run writes to out_dir/name/"""


@dataclass
class Config:
    kernels: str = "auto"
    """fused affine-layer ops: auto (Triton on CUDA tensors, eager elsewhere) | triton | eager"""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


_POSITIVE = (
    "model.latent_dim",
    "train.steps",
    "train.batch_size",
    "train.val_every",
    "train.log_every",
    "eval.num_samples",
    "eval.chunk_size",
    "eval.batch_size",
    "model.iwae_samples",
)


def _check(cfg: Config) -> None:
    for key in _POSITIVE:
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise ConfigError(f"{key}={getattr(getattr(cfg, section), name)} must be at least 1")
    for key in ("train.lr", "model.proposal_std", "eval.temperature", "train.grad_clip"):
        section, name = key.split(".")
        if not getattr(getattr(cfg, section), name) > 0:
            raise ConfigError(f"{key}={getattr(getattr(cfg, section), name)} must be positive")
    if cfg.kernels not in ("auto", "triton", "eager"):
        raise ConfigError(f"kernels={cfg.kernels!r} is unknown: choose one of auto, triton, eager")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers={cfg.data.num_workers} must be 0 or more")
    if cfg.model.image_shape is not None and (len(cfg.model.image_shape) != 3 or min(cfg.model.image_shape) < 1):
        raise ConfigError(f"model.image_shape={cfg.model.image_shape} must be three positive ints [C, H, W]")
    fractions = cfg.data.val_fraction + cfg.data.test_fraction
    if not (0 < cfg.data.val_fraction and 0 < cfg.data.test_fraction and fractions < 1):
        raise ConfigError(
            f"data.val_fraction={cfg.data.val_fraction} and data.test_fraction={cfg.data.test_fraction} "
            "must be positive and sum to less than 1"
        )


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Schema defaults <- YAML file ``path`` <- ``key=value`` overrides, type-checked and validated."""
    schema = OmegaConf.structured(Config)
    layers = [schema]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            layers.append(OmegaConf.load(path))
        except Exception as exc:  # yaml parse errors have many types
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.steps=200)")
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        reason = str(exc).splitlines()[0]
        where = f" (in {path})" if path is not None else ""
        raise ConfigError(f"config key {key!r}{where}: {reason}") from exc
    _check(cfg)
    return cfg


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
