"""``aef-hpc eval``: the likelihood of a split in nats and bits/dim (mean ± standard error), per-image records,
the effective sample size of importance sampling, and optionally FID and the denoising metrics.

Results go to ``RUN/eval/<checkpoint>-<split>/``: ``records.csv`` (key, nll_nats, bits_per_dim, ess; empty ess
for exact likelihoods) and ``summary.json``. The training run's final test is this same function on its best
checkpoint, so ``aef-hpc eval RUN`` reproduces it exactly.
"""

import csv
import io
import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..data import dequantize
from ..engine.checkpoint import write_atomic
from ..engine.discovery import on_every_rank, on_rank0, world_info
from ..errors import ConfigError, DataError
from ..metrics import bits_per_dim
from ..models import ExpandedAEF, select_proposal_std
from .likelihood import PerImage, first_images, limited, per_image_nll
from .restore import Trained


def check_fid_weights(path: str | None) -> None:
    """Fail before any work when ``eval.fid_weights`` names no file (never a download)."""
    if path is not None and not Path(path).is_file():
        raise ConfigError(
            f"eval.fid_weights={path!r} is not a file: give the local pt_inception-2015-12-05 weights "
            "(pytorch-fid's .pth), or leave eval.fid_weights unset to skip FID"
        )


def proposal_std(trained: Trained, data) -> dict | None:
    """aef-linear: the proposal std grid-searched on validation images (method.md §1.4), stored in the checkpoint
    as ``proposal.json`` and reused while the grid, K and image count stay the same. ``None`` for other models
    or with ``eval.select_proposal_std=false`` (the model's own ``proposal_std`` is used)."""
    model, e = trained.model, trained.cfg.eval
    if not isinstance(model, ExpandedAEF) or not e.select_proposal_std:
        return None
    path = trained.checkpoint.path / "proposal.json"
    settings = {
        "stds": list(e.proposal_stds),
        "num_samples": e.proposal_num_samples,
        "images": e.proposal_images,
        "seed": e.seed,
        "ema": trained.ema,
    }
    stored = json.loads(path.read_text()) if path.exists() else None
    if stored is None or stored.get("settings") != settings:
        gen = torch.Generator().manual_seed(e.seed)
        val = [
            dequantize(images, data.levels, gen).to(trained.device)
            for _, images in limited(data.eval_batches("val", e.batch_size, whole=True), e.proposal_images)
        ]
        best, scores = select_proposal_std(model, val, e.proposal_stds, e.proposal_num_samples, e.chunk_size, gen)
        stored = {"proposal_std": best, "scores": {str(k): v for k, v in scores.items()}, "settings": settings}
        write_atomic(path, json.dumps(stored, indent=2))
    model.proposal_std.fill_(stored["proposal_std"])
    return stored


def _standard_error(values: torch.Tensor) -> float:
    return values.std().item() / math.sqrt(len(values)) if len(values) > 1 else math.nan


def check_world(cfg, world: int) -> None:
    """What N ranks cannot do (yet): a prefix of the split (``eval.limit``) or the image metrics (FID, denoising),
    which read the first images of one stream."""
    if world > 1 and cfg.eval.limit is not None:
        raise ConfigError(
            f"eval.limit={cfg.eval.limit} takes the first images of one process: unset it on {world} ranks"
        )
    if world > 1 and (cfg.eval.fid_weights or cfg.data.noise_std > 0):
        raise ConfigError(
            f"FID and the denoising metrics run in one process: evaluate on one rank (this job has {world}), or "
            "unset eval.fid_weights and data.noise_std"
        )


def _gather(result: PerImage, expected: int | None, split: str) -> PerImage:
    """Every rank's images on every rank (rank order); each key exactly once, ``expected`` of them when given."""
    rank, world = world_info()
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (result.keys, result.nll, result.ess))
        ess = [p[2] for p in parts]
        result = PerImage(
            [k for p in parts for k in p[0]],
            torch.cat([p[1] for p in parts]),
            None if ess[0] is None else torch.cat(ess),
        )
    if len(set(result.keys)) != len(result.keys):
        seen, twice = set(), None
        for key in result.keys:
            twice = key if key in seen else twice
            seen.add(key)
        raise DataError(f"{split} split: image {twice} was evaluated twice (keys must be unique across shards)")
    if expected is not None and len(result.keys) != expected:
        raise DataError(f"{split} split: {len(result.keys)} images were evaluated but the data holds {expected}")
    return result


def evaluate(trained: Trained, data) -> tuple[dict, Path]:
    """Evaluate ``trained`` on ``eval.split`` of ``data`` on every rank of the job (each its share of the shards);
    rank 0 writes the records and summary; returns ``(summary, folder)`` on every rank. Per-image numbers do not
    depend on the number of ranks (noise keyed by ``(eval.seed, image key)``)."""
    cfg, model, device = trained.cfg, trained.model, trained.device
    e = cfg.eval
    check_fid_weights(e.fid_weights)
    _, world = world_info()
    check_world(cfg, world)
    started = time.monotonic()
    proposal = on_rank0(lambda: proposal_std(trained, data))  # one search, one writer of proposal.json
    if proposal is not None:
        model.proposal_std.fill_(proposal["proposal_std"])
    batches = limited(data.eval_batches(e.split, e.batch_size, collective=False), e.limit)
    result = on_every_rank(  # a rank that fails (a corrupt shard) stops every rank, nothing is written
        lambda: per_image_nll(model, batches, data.levels, e.num_samples, e.repeats, e.chunk_size, e.seed, device),
        f"evaluating the {e.split} split",
    )
    result = _gather(result, None if e.limit is not None else data.count(e.split), e.split)
    return on_rank0(lambda: _write(trained, data, result, proposal, started))


def _write(trained: Trained, data, result: PerImage, proposal: dict | None, started: float) -> tuple[dict, Path]:
    cfg, model = trained.cfg, trained.model
    e = cfg.eval
    bpd = bits_per_dim(result.nll, model.num_dims, data.levels)
    summary = {
        "checkpoint": str(trained.checkpoint.path),
        "step": trained.checkpoint.step,
        "split": e.split,
        "objective": model.loss_name,
        "estimator": "exact" if model.exact_likelihood else "importance sampling",
        "count": len(result.keys),
        "nll_nats": result.nll.mean().item(),
        "nll_nats_se": _standard_error(result.nll),
        "bits_per_dim": bpd.mean().item(),
        "bits_per_dim_se": _standard_error(bpd),
        "levels": data.levels,
        "ema_weights": trained.ema,
        "seed": e.seed,
        "world_size": world_info()[1],
    }
    if not model.exact_likelihood:
        summary.update(
            num_samples=e.num_samples,
            repeats=e.repeats,
            chunk_size=e.chunk_size,
            ess_min=result.ess.min().item(),
            ess_median=result.ess.median().item(),
        )
    if isinstance(model, ExpandedAEF):
        summary["proposal_std"] = float(model.proposal_std)
        summary["proposal_std_selected"] = proposal is not None
    summary.update(_image_metrics(trained, data))
    summary["seconds"] = round(time.monotonic() - started, 3)

    tag = f"-data-{trained.data_tag}" if trained.data_tag else ""  # other data never overwrites the run's own
    out = trained.checkpoint.run_dir / "eval" / f"{trained.checkpoint.path.name}-{e.split}{tag}"
    out.mkdir(parents=True, exist_ok=True)
    ess = result.ess.tolist() if result.ess is not None else [None] * len(result.keys)
    rows = zip(result.keys, result.nll.tolist(), bpd.tolist(), ess, strict=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["key", "nll_nats", "bits_per_dim", "ess"])
    writer.writerows((k, repr(n), repr(b), "" if s is None else repr(s)) for k, n, b, s in rows)
    write_atomic(out / "records.csv", text.getvalue())
    write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary, out


@torch.no_grad()
def _image_metrics(trained: Trained, data) -> dict:
    """Denoising (with ``data.noise_std``) reconstruction MSE, and FID / IFE when ``eval.fid_weights`` is set."""
    cfg, model, device = trained.cfg, trained.model, trained.device
    e, sigma = cfg.eval, cfg.data.noise_std
    out = {}
    if sigma == 0 and e.fid_weights is None:
        return out
    clean = first_images(data.eval_batches(e.split, e.batch_size), e.fid_samples).to(device).float() / (data.levels - 1)
    gen = torch.Generator(device=device).manual_seed(e.seed)
    reconstruct = lambda x: torch.cat([model.decode(model.encode(b)) for b in x.split(e.batch_size)])  # noqa: E731
    recon = None
    if sigma > 0:  # method.md §4.3: the raw test image plus noise, clamped; compared with the clean image
        noisy = (clean + sigma * torch.randn(clean.shape, generator=gen, device=device)).clamp(0, 1)
        recon = reconstruct(noisy)
        out["denoise_noise_std"] = sigma
        out["denoise_mse"] = (recon - clean).square().mean().item()
        out["reconstruction_mse_clean"] = (reconstruct(clean) - clean).square().mean().item()
    if e.fid_weights:
        from .fid import fid, inception_feature_error
        from .inception import load_inception

        inception = load_inception(e.fid_weights).to(device)
        fake = _finite_samples(model, len(clean), e.batch_size, gen)
        out["fid"] = fid(inception, clean, fake, e.batch_size, device)
        out["fid_samples"] = len(clean)
        if recon is not None:
            out["ife"] = inception_feature_error(inception, recon, clean, e.batch_size, device)
    return out


def _finite_samples(model, n: int, batch_size: int, generator, attempts: int = 10) -> torch.Tensor:
    """``n`` samples at temperature 1 (decoder means, unclamped, as the reference); non-finite rows redrawn."""
    kept, have = [], 0
    for _ in range(attempts * max(1, -(-n // batch_size))):
        if have >= n:
            break
        x = model.sample(min(batch_size, n - have), 1.0, generator)
        x = x[torch.isfinite(x.flatten(1)).all(1)]
        kept.append(x)
        have += len(x)
    if have < n:
        raise ConfigError(f"the model gave only {have} finite samples of {n} for FID: it has diverged")
    return torch.cat(kept)[:n]
