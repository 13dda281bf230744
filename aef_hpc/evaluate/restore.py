"""A trained model back from a run folder or checkpoint folder: its config, weights (EMA when trained with one)
and device; ``aef-hpc eval`` and ``aef-hpc sample`` start here, and so does the training run's own final test."""

from dataclasses import dataclass

import torch

from ..config import Config, from_yaml
from ..engine import Checkpoint, open_checkpoint
from ..engine.single import load_model_weights
from ..errors import CheckpointError, ConfigError
from ..models import GenerativeAutoencoder
from ..models.from_config import model_from_config


@dataclass
class Trained:
    cfg: Config
    checkpoint: Checkpoint
    model: GenerativeAutoencoder
    device: torch.device
    ema: bool
    """whether the weights are the exponential moving average"""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is visible: use train.device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"train.device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from exc


def checkpoint_config(checkpoint: Checkpoint, overrides: list[str] = ()) -> Config:
    """The config a checkpoint was written with, ``key=value`` overrides on top; ``model.*`` may not change."""
    path = checkpoint.path / "config.yaml"
    saved = from_yaml(path.read_text(), where=str(path))
    cfg = from_yaml(path.read_text(), overrides, where=str(path))
    changed = [k for k, v in vars(cfg.model).items() if getattr(saved.model, k) != v]
    if changed:
        key = changed[0]
        raise ConfigError(
            f"model.{key}={getattr(cfg.model, key)!r} differs from the checkpoint's {getattr(saved.model, key)!r}: "
            "the model's shape is fixed by its checkpoint (train a new run for another model)"
        )
    return cfg


def restore(path, overrides: list[str] = (), use_ema: bool = True) -> Trained:
    """Open ``path`` (a run folder: its best checkpoint; or a checkpoint folder) and rebuild its model."""
    checkpoint = open_checkpoint(path)
    cfg = checkpoint_config(checkpoint, overrides)
    return restore_checkpoint(checkpoint, cfg, use_ema)


def restore_checkpoint(checkpoint: Checkpoint, cfg: Config, use_ema: bool = True) -> Trained:
    device = resolve_device(cfg.train.device)
    if cfg.model.image_shape is None:
        raise CheckpointError(f"{checkpoint.path}/config.yaml records no model.image_shape: not a complete run")
    model = model_from_config(cfg.model, cfg.model.image_shape)
    state = torch.load(checkpoint.path / "model.pt", weights_only=True, map_location="cpu")
    ema = None
    if use_ema and cfg.train.ema_rate > 0:
        ema = torch.load(checkpoint.path / "train_state.pt", weights_only=True, map_location="cpu")["ema"]
        state = {**state, **(ema or {})}
    load_model_weights(model, checkpoint.path / "model.pt", state)
    return Trained(cfg, checkpoint, model.to(device).eval(), device, ema is not None)
