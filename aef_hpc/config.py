"""The typed configuration schema (omegaconf structured configs) and its loader.

Every default lives here; a YAML file overrides it and ``key=value`` arguments override both. Unknown keys,
wrong types and impossible values raise ``ConfigError`` naming the key.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError


@dataclass
class ModelConfig:
    name: str = "aef-center"
    """aef-center | aef-corner | aef-checkerboard | aef-linear | vae | iwae"""
    architecture: str = "small"
    """small (two convs, H and W divisible by 4) | big (VDVAE-like, square power of two) | mlp (any shape)"""
    latent_dim: int = 2
    width: Optional[int] = None
    """big: channel width of the blocks; null: latent_dim (the paper's). Parameters grow as ~39 width² at 8×8"""
    decoder_variance: str = "independent"
    """fixed | independent | dependent"""
    prior_flow: str = "none"
    """none | maf | iaf | realnvp (affine coupling, parallel both ways; latent_dim >= 2)"""
    posterior_flow: str = "none"
    """core flow of an AEF, posterior flow of a VAE: none | maf | iaf | realnvp"""
    alpha: float = 1e-6
    """logit squeeze: 1e-6 for MNIST-like data, 0.05 for colour images (method.md §1.1)"""
    flow_hidden: int = 256
    flow_layers: int = 4
    flow_blocks: int = 2
    """residual MADE blocks per layer (maf, iaf); hidden layers of each coupling's conditioner (realnvp)"""
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
    on_bad_shard: str = "error"
    """a missing or corrupt training shard: error (before training starts) | skip (dropped, counted)"""
    noise_std: float = 0.0
    """denoising (method.md §4.3): train on clamp(x + N(0, noise_std^2), 0, 1); 0 trains on clean data"""


@dataclass
class TrainConfig:
    steps: int = 2000
    """optimizer steps (each of accumulate micro-batches)"""
    batch_size: int = 128
    """micro-batch size per rank"""
    accumulate: int = 1
    """micro-batches whose gradients are summed into one optimizer step"""
    lr: float = 1e-3
    lr_schedule: str = "constant"
    """constant | cosine (linear warmup over warmup_steps, then cosine decay to min_lr at the last step)"""
    warmup_steps: int = 0
    min_lr: float = 0.0
    grad_clip: float = 200.0
    """max global gradient norm (the paper's 200)"""
    skip_threshold: Optional[float] = None
    """skip a step whose gradient norm exceeds this (VDVAE's rule); null: skip only non-finite steps"""
    max_skips: int = 20
    """this many skipped steps in a row stop the run (the last good checkpoint stays)"""
    ema_rate: float = 0.0
    """EMA of the weights used by validation and evaluation (VDVAE: 0.9999); 0 is off"""
    precision: str = "fp32"
    """fp32 | bf16 (autocast; log-dets and likelihoods still accumulate in float32)"""
    compile: bool = False
    """run the training step's forward under torch.compile"""
    seed: int = 0
    """seeds model init, batch order and dequantization noise"""
    val_every: int = 250
    """validate (and checkpoint) every this many steps, and at the last step"""
    checkpoint_every: Optional[int] = None
    """checkpoint every this many steps too; null: at validations only"""
    patience: Optional[int] = None
    """early stopping: stop after this many steps without a better validation; null: off"""
    log_every: int = 10
    """log the objective every this many steps (the only host synchronisation besides the step check)"""
    progress_every: float = 30.0
    """seconds between plain progress lines when stderr is not a terminal"""
    device: str = "auto"
    """auto (cuda if available) | cpu | cuda | cuda:N"""


@dataclass
class EvalConfig:
    split: str = "test"
    """the split evaluated: test | val | train"""
    num_samples: int = 128
    """K of the importance-sampling marginal likelihood (aef-linear, vae, iwae)"""
    repeats: int = 20
    """importance-sampling estimates averaged per image (the paper's 20 of K=128)"""
    chunk_size: Optional[int] = None
    """importance samples evaluated at once (bounds memory; the result does not depend on it); null: as many as keep
    a pass near 256 x 28 x 28 values (samples x images x pixels) on a CPU, where the convolutions run fastest, 32
    on CUDA"""
    precision: str = "fp32"
    """fp32 | bf16 (opt-in autocast where bf16 is hardware: a GPU, a CPU with AMX or AVX512-BF16; ~3x faster on
    such a CPU, NLLs a few nats per image apart: docs/benchmarks.md)"""
    batch_size: int = 256
    limit: Optional[int] = None
    """evaluate only the first this many images of the split; null: all"""
    select_proposal_std: bool = True
    """aef-linear: grid-search the proposal std on validation data (stored in the checkpoint it evaluates)"""
    proposal_stds: list[float] = field(
        default_factory=lambda: [2.0, 1.0, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001, 5e-4, 1e-4, 5e-5, 1e-5]
    )
    """the grid of proposal stds searched (method.md §1.4's table reaches 9e-5)"""
    proposal_num_samples: int = 64
    """K of the proposal-std search"""
    proposal_images: int = 2048
    """validation images used by the proposal-std search"""
    grid_samples: int = 64
    temperature: float = 1.0
    seed: int = 0
    fid_weights: Optional[str] = None
    """local pt_inception-2015-12-05 state dict (pytorch-fid's file); FID and IFE are computed when set"""
    fid_samples: int = 2048
    """images per side of the FID (the paper's 2048 vs 2048)"""


@dataclass
class RunConfig:
    name: Optional[str] = None
    """the run writes to out_dir/name/; null: <model.name>-<date>-<time>. An existing folder is never written
    into except by `aef-hpc train --resume`"""
    out_dir: str = "runs"
    keep_last: int = 3
    """complete checkpoints kept (at least 2), besides the best one"""
    max_requeues: int = 20
    """SIGUSR1 under SLURM checkpoints and requeues the job at most this many times (counted in the checkpoints)"""


@dataclass
class DeepSpeedConfig:
    config: str = "configs/deepspeed/zero2.yaml"
    """a DeepSpeed preset (configs/deepspeed/zero0..3.yaml): the ZeRO stage and its options only; batch size,
    accumulation, clipping, optimizer, LR and precision come from train.* (one source of truth)"""
    offload_optimizer: bool = False
    """keep optimizer states on the CPU (ZeRO 1-3; compiles DeepSpeedCPUAdam on first use)"""


@dataclass
class Config:
    kernels: str = "auto"
    """fused affine-layer ops: auto (Triton on CUDA tensors, eager elsewhere) | triton | eager"""
    engine: str = "single"
    """single (one process) | ddp (torch DistributedDataParallel) | deepspeed (ZeRO, see deepspeed.config)"""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


_POSITIVE = (
    "model.latent_dim",
    "train.steps",
    "train.batch_size",
    "train.accumulate",
    "train.val_every",
    "train.log_every",
    "train.max_skips",
    "eval.num_samples",
    "eval.repeats",
    "eval.batch_size",
    "eval.proposal_num_samples",
    "eval.proposal_images",
    "eval.grid_samples",
    "eval.fid_samples",
    "model.iwae_samples",
    "model.flow_hidden",
    "model.flow_layers",
    "data.shuffle_buffer",
)
#: keys that may be null, and what null means
_POSITIVE_OR_NULL = {
    "train.checkpoint_every": "off",
    "train.patience": "off",
    "eval.limit": "every image",
    "eval.chunk_size": "chosen for the device",
    "train.skip_threshold": "off",
}
#: the kinds of ``aef_hpc.flows.build_flow``, repeated because the config sits below the flows (a test keeps them equal)
FLOW_KINDS = ("none", "maf", "iaf", "realnvp")
_CHOICES = {
    "model.prior_flow": FLOW_KINDS,
    "model.posterior_flow": FLOW_KINDS,
    "kernels": ("auto", "triton", "eager"),
    "engine": ("single", "ddp", "deepspeed"),
    "train.lr_schedule": ("constant", "cosine"),
    "train.precision": ("fp32", "bf16"),
    "eval.precision": ("fp32", "bf16"),
    "data.on_bad_shard": ("error", "skip"),
    "eval.split": ("test", "val", "train"),
}


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _non_finite(section, prefix: str = "") -> str | None:
    """The first float (or list of floats) in a config section that is NaN or infinite, as ``key=value``."""
    for name, value in vars(section).items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                return f"{prefix}{name}={value}"
        if hasattr(value, "__dataclass_fields__"):
            found = _non_finite(value, f"{prefix}{name}.")
            if found:
                return found
    return None


def _check(cfg: Config) -> None:
    bad = _non_finite(cfg)
    if bad:
        raise ConfigError(f"{bad} is not a finite number")
    for key in _POSITIVE:
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key}={_get(cfg, key)} must be at least 1")
    for key, null in _POSITIVE_OR_NULL.items():
        if _get(cfg, key) is not None and not _get(cfg, key) > 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must be positive, or null ({null})")
    for key in ("train.lr", "model.proposal_std", "eval.temperature", "train.grad_clip", "train.progress_every"):
        if not _get(cfg, key) > 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must be positive")
    for key, choices in _CHOICES.items():
        if _get(cfg, key) not in choices:
            raise ConfigError(f"{key}={_get(cfg, key)!r} is unknown: choose one of {', '.join(choices)}")
    for key in ("train.warmup_steps", "train.min_lr", "data.noise_std", "model.flow_blocks"):
        if not _get(cfg, key) >= 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must be 0 or more")
    if not 0 <= cfg.train.ema_rate < 1:
        raise ConfigError(f"train.ema_rate={cfg.train.ema_rate} must be in [0, 1) (0 is off; VDVAE uses 0.9999)")
    if cfg.run.keep_last < 2:
        raise ConfigError(
            f"run.keep_last={cfg.run.keep_last} must be at least 2: the newest checkpoint may be cut by a kill"
        )
    if not cfg.eval.proposal_stds or min(cfg.eval.proposal_stds) <= 0:
        raise ConfigError(f"eval.proposal_stds={cfg.eval.proposal_stds} must be a non-empty list of positive stds")
    if cfg.run.name is not None and (not cfg.run.name or "/" in cfg.run.name or cfg.run.name in (".", "..")):
        raise ConfigError(f"run.name={cfg.run.name!r} must be a plain folder name (no '/'), or null for automatic")
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
    if path is None:
        return _merge(None, overrides, "")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        layer = OmegaConf.load(path)
    except Exception as exc:  # yaml parse errors have many types
        reason = " ".join(str(exc).split())[:300]
        raise ConfigError(f"config file {path} is not valid YAML: {reason}") from None
    return _merge(layer, overrides, f" (in {path})")


def from_yaml(text: str, overrides: list[str] = (), where: str = "the checkpoint") -> Config:
    """A config saved with ``to_yaml`` (in a run folder or checkpoint), with ``key=value`` overrides on top."""
    try:
        layer = OmegaConf.create(text)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"the config in {where} is not valid YAML: {exc}") from exc
    return _merge(layer, overrides, f" (in {where})")


def _merge(layer, overrides: list[str], where: str) -> Config:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.steps=200)")
    _check_each_value(layer, overrides, where)
    if layer is not None and not isinstance(layer, DictConfig):
        raise ConfigError(f"the config{where} must be a mapping of sections (model:, train:, ...), not a list or value")
    try:
        layers = [OmegaConf.structured(Config), *([layer] if layer is not None else [])]
        merged = OmegaConf.merge(*layers, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "(a section)"
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"config key {key!r}{where}: {reason}") from exc
    _check(cfg)
    return cfg


def _check_each_value(layer, overrides: list[str], where: str) -> None:
    """A key given twice on the command line: the last value wins, and every earlier value is validated too, so
    a bad value is never silently dropped."""
    keys = [item.split("=", 1)[0].strip() for item in overrides]
    for i, key in enumerate(keys):
        if key in keys[i + 1 :]:
            _merge(layer, [item for j, item in enumerate(overrides) if keys[j] != key or j == i], where)


def flat_items(cfg: Config) -> dict:
    """Every setting as ``{"train.lr": 0.001, ...}`` (dotted key -> value)."""

    def walk(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(walk(OmegaConf.to_container(OmegaConf.structured(cfg))))


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
