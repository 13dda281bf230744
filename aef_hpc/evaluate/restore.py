"""A trained model back from a run folder or checkpoint folder: its config, weights (EMA when trained with one)
and device; ``aef-hpc eval`` and ``aef-hpc sample`` start here, and so does the training run's own final test."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from ..config import Config, from_yaml
from ..engine import Checkpoint, open_checkpoint
from ..engine.checkpoint import load_file
from ..engine.single import load_model_weights
from ..errors import CheckpointError, ConfigError, DataError
from ..models import GenerativeAutoencoder
from ..models.from_config import model_from_config

EXPORT_FILE = "model.safetensors"


@dataclass
class Trained:
    cfg: Config
    checkpoint: Checkpoint
    model: GenerativeAutoencoder
    device: torch.device
    ema: bool
    """whether the weights are the exponential moving average"""
    tag: str = ""
    """what this evaluation does differently from the run's own final test (``settings_tag``): names its folder"""
    weights: str = ""
    """``weights_digest`` of the weights evaluation uses: what its stored results are keyed by"""


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and bytes: the weights themselves, whatever files hold them
    (a requeue's rewrite of the same weights keeps it; a step folder made again with other weights changes it)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is visible: use train.device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"train.device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from exc


def checkpoint_config(checkpoint: Checkpoint, overrides: list[str] = (), base: Path | None = None) -> Config:
    """The config of ``base`` (default: the one the checkpoint was written with) with ``key=value`` overrides on
    top; ``model.*`` must stay the checkpoint's."""
    path = checkpoint.path / "config.yaml"
    try:
        saved = from_yaml(path.read_text(), where=str(path))
        base_text = (base or path).read_text()
        from_yaml(base_text, where=str(base or path))
    except OSError as exc:
        raise CheckpointError(f"{exc.filename}: {exc.strerror}") from None
    cfg = from_yaml(base_text, overrides, where="the command line")
    changed = [k for k, v in vars(cfg.model).items() if getattr(saved.model, k) != v]
    if changed:
        key = changed[0]
        raise ConfigError(
            f"model.{key}={getattr(cfg.model, key)!r} differs from the checkpoint's {getattr(saved.model, key)!r}: "
            "the model's shape is fixed by its checkpoint (train a new run for another model)"
        )
    return cfg


def restore(path, overrides: list[str] = (), use_ema: bool = True, device: torch.device | None = None) -> Trained:
    """Open ``path`` and rebuild its model: a run folder gives its best checkpoint with the run's own (latest)
    config, as its final test used; a checkpoint folder gives that checkpoint with the config it was saved with.
    ``device`` overrides ``train.device`` (a job of N ranks restores on the CPU, then moves to each rank's GPU)."""
    checkpoint = open_checkpoint(path)
    base = run_config(path)
    cfg = checkpoint_config(checkpoint, overrides, base)
    trained = restore_checkpoint(checkpoint, cfg, use_ema, device)
    trained.tag = settings_tag(checkpoint_config(checkpoint, (), base), cfg)
    return trained


#: eval keys that change no number of an evaluation (memory and speed only), or that name its folder already
_NOT_TAGGED = ("split", "batch_size", "chunk_size")


def settings_tag(own: Config, cfg: Config) -> str:
    """How ``cfg``'s evaluation differs from the run's own (``own``, its final test), readable: ``K1024x20``
    (importance samples x repeats), ``seed3``, ``first100`` (``eval.limit``), ``bf16`` (``eval.precision``),
    ``eval-<hash>`` (other eval keys: the proposal grid, FID), ``data-<hash>`` (other data); ``""``: the same."""
    e, o = cfg.eval, own.eval
    parts = []
    if (e.num_samples, e.repeats) != (o.num_samples, o.repeats):
        parts.append(f"K{e.num_samples}x{e.repeats}")
    if e.seed != o.seed:
        parts.append(f"seed{e.seed}")
    if e.limit != o.limit:
        parts.append(f"first{e.limit}" if e.limit is not None else "all")
    if e.precision != o.precision:
        parts.append(e.precision)
    known = ("num_samples", "repeats", "seed", "limit", "precision", *_NOT_TAGGED)
    others = {k: v for k, v in vars(e).items() if k not in known and v != getattr(o, k)}
    if others:
        parts.append(f"eval-{_short_hash(others)}")
    if cfg.data != own.data:
        parts.append(f"data-{_short_hash(vars(cfg.data))}")
    return "-".join(parts)


def _short_hash(values: dict) -> str:
    return hashlib.sha256(repr(sorted(values.items())).encode()).hexdigest()[:8]


def run_config(path) -> Path | None:
    """A run folder's own (latest) ``config.yaml``, which its final test used; ``None`` for a checkpoint folder."""
    config = Path(path) / "config.yaml"
    return config if not (Path(path) / "meta.json").exists() and config.is_file() else None


def checkpoint_weights(
    checkpoint: Checkpoint, cfg: Config, use_ema: bool = True, into: dict | None = None
) -> tuple[dict, bool, Path]:
    """The whole weights of any checkpoint in one process: an export's ``model.safetensors``, a DeepSpeed
    checkpoint consolidated (any ZeRO stage and rank count; ZeRO-3 written straight into ``into``, a model's
    ``state_dict()``, so a model larger than one process's training state is held once), or ``model.pt``; with the
    EMA on top when the run kept one. Returns ``(state dict, whether they are EMA weights, where they came from)``."""
    path = checkpoint.path
    if (path / EXPORT_FILE).is_file():
        try:
            return safetensors.torch.load_file(path / EXPORT_FILE), bool(checkpoint.meta.get("ema")), path / EXPORT_FILE
        except Exception as exc:  # noqa: BLE001  safetensors raises its own error types
            raise CheckpointError(f"{path / EXPORT_FILE} is not a readable safetensors file ({exc})") from None
    if checkpoint.meta.get("engine") == "deepspeed":
        from ..engine.deepspeed import TAG, consolidated_state_dict

        source, state = path / TAG, consolidated_state_dict(path, into)
    else:
        source = path / "model.pt"
        state = load_file(source)
    if use_ema and cfg.train.ema_rate > 0:
        ema = load_file(path / "train_state.pt", ("ema",))["ema"]
        if ema:
            return {**state, **ema}, True, source
    return state, False, source


def restore_checkpoint(checkpoint: Checkpoint, cfg: Config, use_ema: bool = True, device=None) -> Trained:
    device = resolve_device(cfg.train.device) if device is None else device
    if cfg.model.image_shape is None:
        raise CheckpointError(f"{checkpoint.path}/config.yaml records no model.image_shape: not a complete run")
    model = model_from_config(cfg.model, cfg.model.image_shape)
    state, ema, source = checkpoint_weights(checkpoint, cfg, use_ema, into=model.state_dict())
    load_model_weights(model, source, state)
    return Trained(cfg, checkpoint, model.to(device).eval(), device, ema, weights=weights_digest(state))


def check_same_data(checkpoint: Checkpoint, data) -> None:
    """Resuming or evaluating on data with other images or pixel levels than the model was trained on is refused."""
    shape, levels = checkpoint.meta.get("image_shape"), checkpoint.meta.get("levels")
    if shape is not None and list(shape) != list(data.image_shape):
        raise DataError(
            f"the data's images are {list(data.image_shape)} but {checkpoint.path} was trained on "
            f"{shape}: check data.path"
        )
    if levels is not None and levels != data.levels:
        raise DataError(
            f"the data has {data.levels} pixel levels but {checkpoint.path} was trained on {levels}: "
            "bits/dim would be wrong; check data.path"
        )
