"""The training loop: Adam on the model's objective, validation with best-checkpoint selection, then the
test likelihood in bits/dim and a PNG grid of samples and reconstructions.

Usage: ``aef-hpc train [--config FILE] [key=value ...]`` (see ``aef_hpc.config`` for every key).
"""

import copy
import csv
import itertools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import Config, to_yaml
from ..data import dequantize, open_data
from ..errors import AEFError, ConfigError, DataError
from ..evaluate import mean_loss, negative_log_likelihood, save_grid
from ..kernels import check_available, use_kernels
from ..metrics import bits_per_dim
from ..models import ExpandedAEF, select_proposal_std
from .factory import model_from_config
from .run_dir import atomic_save, atomic_write_text, fresh_run_dir


class TrainingDiverged(AEFError):
    """The training objective became NaN or infinite."""


@dataclass
class RunResult:
    run_dir: Path
    loss_name: str
    losses: list[float]
    best_val_loss: float
    test_nll: float
    """mean negative log-likelihood of a test image, nats"""
    test_bpd: float
    grid: Path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is visible: use train.device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"train.device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from exc


def check_data_matches_model(data, cfg: Config) -> None:
    """The data's image shape and bit depth against the ones the model config expects (if it names them)."""
    expected = cfg.model.image_shape
    if expected is not None and tuple(expected) != tuple(data.image_shape):
        raise DataError(
            f"the data holds images of shape {list(data.image_shape)} but model.image_shape={list(expected)}: "
            "fix model.image_shape (or set it to null) or rewrite the shards with --resolution"
        )
    for split in ("train", "val", "test"):
        data.count(split)  # a missing split stops here, not after training
    bits = max(1, math.ceil(math.log2(data.levels)))
    if cfg.model.bit_depth is not None and cfg.model.bit_depth != bits:
        raise DataError(f"the data has {data.levels} levels ({bits} bits) but model.bit_depth={cfg.model.bit_depth}")


def training_batches(data, batch_size: int):
    """``(epoch, Batch)`` forever, epoch after epoch."""
    for epoch in itertools.count():
        for batch in data.train_epoch(epoch, batch_size):
            yield epoch, batch


def train(cfg: Config, progress: bool = True) -> RunResult:
    with use_kernels(cfg.kernels):
        return _train(cfg, progress)


def _train(cfg: Config, progress: bool) -> RunResult:
    torch.manual_seed(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    check_available(cfg.kernels, device)
    d = cfg.data
    data = open_data(
        d.name, d.path, d.manifest, d.val_fraction, d.test_fraction, d.seed, d.num_workers, d.shuffle_buffer
    )
    check_data_matches_model(data, cfg)
    model = model_from_config(cfg.model, data.image_shape).to(device)
    run_dir = fresh_run_dir(cfg.run.out_dir, cfg.run.name)
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    data_gen = torch.Generator().manual_seed(cfg.train.seed + 1)
    eval_gen = lambda: torch.Generator().manual_seed(cfg.eval.seed)  # noqa: E731  same noise at every validation
    batches = training_batches(data, cfg.train.batch_size)
    losses, best_val, best_state, skipped = [], math.inf, None, 0

    with open(run_dir / "metrics.csv", "w", newline="") as handle:
        log = csv.writer(handle)
        log.writerow(["step", "split", "metric", "value"])
        bar = tqdm(
            range(1, cfg.train.steps + 1),
            desc=f"train {cfg.model.name}",
            disable=not progress,
            mininterval=0.5 if sys.stderr.isatty() else 10.0,
            dynamic_ncols=True,
        )
        for step in bar:
            model.train()
            epoch, batch = next(batches)
            skipped += batch.skipped
            x = dequantize(batch.images, data.levels, data_gen).to(device)
            loss = model.loss(x).mean()
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"{model.loss_name} became {loss.item()} at step {step}: lower train.lr or train.grad_clip"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix({model.loss_name: f"{losses[-1]:.2f}"})
            if step % cfg.train.log_every == 0:
                log.writerow([step, "train", model.loss_name, losses[-1]])
                log.writerow([step, "train", "epoch", epoch])
                log.writerow([step, "train", "skipped_samples", skipped])
            if step % cfg.train.val_every == 0 or step == cfg.train.steps:
                val = mean_loss(model, data.eval_batches("val", cfg.eval.batch_size), data.levels, eval_gen(), device)
                log.writerow([step, "val", model.loss_name, val])
                handle.flush()
                if val < best_val:
                    best_val, best_state = val, copy.deepcopy(model.state_dict())

    model.load_state_dict(best_state)
    atomic_save({"model": best_state, "config": to_yaml(cfg)}, run_dir / "model.pt")
    return evaluate_run(model, cfg, data, run_dir, device, losses, best_val, skipped)


def evaluate_run(model, cfg: Config, data, run_dir: Path, device, losses, best_val, skipped=0) -> RunResult:
    """Test NLL (exact or importance-sampled) in nats and bits/dim, per-sample records, and the PNG grid."""
    model.eval()
    summary = {"loss_name": model.loss_name, "best_val_loss": best_val, "skipped_samples": skipped}
    if isinstance(model, ExpandedAEF) and cfg.eval.select_proposal_std:
        gen = torch.Generator().manual_seed(cfg.eval.seed)
        val = [dequantize(b, data.levels, gen).to(device) for _, b in data.eval_batches("val", cfg.eval.batch_size)]
        summary["proposal_std"], _ = select_proposal_std(
            model, val, num_samples=64, chunk_size=cfg.eval.chunk_size, generator=gen
        )
    gen = torch.Generator().manual_seed(cfg.eval.seed)
    test = data.eval_batches("test", cfg.eval.batch_size)
    keys, nll = negative_log_likelihood(
        model, test, data.levels, cfg.eval.num_samples, cfg.eval.chunk_size, gen, device
    )
    summary["test_nll"] = nll.mean().item()
    summary["test_bpd"] = bits_per_dim(summary["test_nll"], model.num_dims, data.levels)
    summary["levels"] = data.levels
    (run_dir / "eval").mkdir(exist_ok=True)
    atomic_write_text(
        run_dir / "eval" / "test_nll.csv",
        "key,nll_nats\n" + "".join(f"{k},{v}\n" for k, v in zip(keys, nll.tolist(), strict=True)),
    )
    atomic_write_text(run_dir / "eval" / "summary.json", json.dumps(summary, indent=2))

    with torch.no_grad():
        samples = model.sample(
            cfg.eval.grid_samples, cfg.eval.temperature, torch.Generator().manual_seed(cfg.eval.seed)
        )
        originals = dequantize(next(iter(data.eval_batches("test", 16)))[1], data.levels, gen).to(device)
        recon = model.decode(model.encode(originals))
    rows = list(samples.split(16)) + [originals, recon]
    grid = save_grid(rows, run_dir / "samples" / "samples_and_reconstructions.png")
    return RunResult(run_dir, model.loss_name, losses, best_val, summary["test_nll"], summary["test_bpd"], grid)
