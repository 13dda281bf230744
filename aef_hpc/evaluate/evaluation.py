"""``aef-hpc eval``: the likelihood of a split in nats and bits/dim (mean ± standard error), per-image records,
the effective sample size of importance sampling, and optionally FID and the denoising metrics.

Results go to ``RUN/eval/<checkpoint>-<split>[-<tag>]/`` (``_folder``: one per setting, never replaced):
- while it runs, ``shards/<shard>.csv`` (key, nll_nats, ess): one file per finished shard, written atomically by
  the rank that evaluated it, and ``settings.json`` (what they were computed with): an interrupted evaluation
  restarted with the same settings skips the finished shards; both go once the records are merged;
- ``records.csv`` (key, shard, nll_nats, bits_per_dim, ess; ess empty for exact likelihoods): all of them, merged
  by rank 0 in manifest order once every shard is complete and every key appears once;
- ``summary.json``: bits/dim mean ± standard error, count, K, repeats, proposal std, world size, the shards whose
  records an interrupted evaluation had finished (``shards_reused``), seconds, and the ``settings`` it was
  computed with.
The training run's final test is this same function on its best checkpoint, so ``aef-hpc eval RUN`` reproduces
it exactly.
"""

import contextlib
import csv
import io
import itertools
import json
import math
import shutil
import time
import warnings
from pathlib import Path

import torch

from ..data import dequantize
from ..engine.checkpoint import write_atomic
from ..errors import AEFWarning, ConfigError, DataError, Interrupted
from ..metrics import bits_per_dim
from ..models import ExpandedAEF, select_proposal_std
from ..process_group import on_every_rank, on_rank0, world_info
from ..progress import Progress, counted
from .likelihood import (
    PerImage,
    draws_per_chunk,
    evaluation_mode,
    first_images,
    limited,
    per_image_nll,
    per_image_nll_as_is,
)
from .restore import Trained

#: the folder (inside the evaluation's) of one records file per finished shard
RECORDS = "shards"
#: a median effective sample size under this share of K is flagged (the MNIST VAE's 5-9 of 128 was not)
LOW_ESS = 0.1


def check_fid_weights(path: str | None) -> None:
    """Fail before any work when ``eval.fid_weights`` names no file (never a download)."""
    if path is not None and not Path(path).is_file():
        raise ConfigError(
            f"eval.fid_weights={path!r} is not a file: give the local pt_inception-2015-12-05 weights "
            "(pytorch-fid's .pth), or leave eval.fid_weights unset to skip FID"
        )


def proposal_path(checkpoint) -> Path:
    """Where a checkpoint's proposal search is kept: ``RUN/eval/<checkpoint>-proposal.json``, outside the committed
    checkpoint folder (which is never written into)."""
    return checkpoint.run_dir / "eval" / f"{checkpoint.path.name}-proposal.json"


def proposal_settings(cfg, weights: str, ema: bool) -> dict:
    """What a proposal search depends on: the weights (``weights_digest``), the grid, K, the images and the seed."""
    e = cfg.eval
    return {
        "weights": weights,
        "stds": list(e.proposal_stds),
        "num_samples": e.proposal_num_samples,
        "images": e.proposal_images,
        "seed": e.seed,
        "ema": ema,
    }


def stored_proposal(checkpoint, settings: dict) -> dict | None:
    """The search stored for exactly these settings, if any."""
    path = proposal_path(checkpoint)
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) and stored.get("settings") == settings else None


def proposal_std(trained: Trained, data) -> dict | None:
    """aef-linear: the proposal std grid-searched on validation images (method.md §1.4), stored next to the
    evaluation records (``proposal_path``) and reused while the weights and the search's settings stay the same.
    ``None`` for other models or with ``eval.select_proposal_std=false`` (the model's own ``proposal_std``, which an
    export carries, is used)."""
    model, e = trained.model, trained.cfg.eval
    if not isinstance(model, ExpandedAEF) or not e.select_proposal_std:
        return None
    settings = proposal_settings(trained.cfg, trained.weights, trained.ema)
    stored = stored_proposal(trained.checkpoint, settings)
    if stored is None:
        gen = torch.Generator().manual_seed(e.seed)
        val = [
            dequantize(images, data.levels, gen).to(trained.device)
            for _, images in limited(data.eval_batches("val", e.batch_size, whole=True), e.proposal_images)
        ]
        with evaluation_mode(model, trained.device):  # in float32 whatever eval.precision: one search per weights
            images = min(e.batch_size, e.proposal_images)  # the search's batches
            pixels = math.prod(data.image_shape)
            chunk = draws_per_chunk(e.chunk_size, images, pixels, e.proposal_num_samples, trained.device)
            best, scores = select_proposal_std(model, val, e.proposal_stds, e.proposal_num_samples, chunk, gen)
        stored = {"proposal_std": best, "scores": {str(k): v for k, v in scores.items()}, "settings": settings}
        path = proposal_path(trained.checkpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
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


def _folder(trained: Trained, settings: dict) -> Path:
    """``RUN/eval/<checkpoint>-<split>[-<tag>]`` (``Trained.tag``: what differs from the run's final test, e.g.
    ``-K1024x20``); where that folder holds results of other settings (other weights under the same step name,
    another device or kernels), ``-2``, ``-3``, ...: an evaluation never replaces another's results."""
    base = f"{trained.checkpoint.path.name}-{trained.cfg.eval.split}" + (f"-{trained.tag}" if trained.tag else "")
    root = trained.checkpoint.run_dir / "eval"
    for n in itertools.count(1):
        folder = root / (base if n == 1 else f"{base}-{n}")
        held = _held_settings(folder)
        if held is None or held == settings:
            return folder
    raise AssertionError("unreachable")


def _held_settings(folder: Path) -> dict | None:
    """The settings of the results a folder holds (finished: its summary's; in progress: ``settings.json``);
    ``None``: it holds none. Unreadable or older results count as other settings."""
    for name, pick in (("summary.json", lambda d: d.get("settings", {})), ("settings.json", lambda d: d)):
        if (folder / name).is_file():
            try:
                return pick(json.loads((folder / name).read_text()))
            except (OSError, ValueError, AttributeError):
                return {}
    return None


def _settings(trained: Trained) -> dict:
    """What the per-shard records depend on (the weights by content, the device and kernels too): records of other
    settings are never reused."""
    e = trained.cfg.eval
    return {
        "weights": trained.weights,  # by content: a step-N made again with other weights is another model
        "step": trained.checkpoint.step,
        "device": trained.device.type,
        "kernels": trained.cfg.kernels,
        "ema": trained.ema,
        "split": e.split,
        "seed": e.seed,
        "num_samples": e.num_samples,
        "repeats": e.repeats,
        "limit": e.limit,
        **({"precision": e.precision} if e.precision != "fp32" else {}),  # float32 records of before it stay valid
        "proposal_std": float(getattr(trained.model, "proposal_std", 0.0)),
        "data": repr(vars(trained.cfg.data)),
    }


def _read_shard(path: Path) -> list[tuple[str, float, float | None]]:
    with open(path, newline="") as handle:
        return [(r["key"], float(r["nll_nats"]), float(r["ess"]) if r["ess"] else None) for r in csv.DictReader(handle)]


def _finished_shards(out: Path, counts: dict[str, int], settings: dict) -> set[str]:
    """Rank 0: the shards whose record files are complete (an interrupted evaluation goes on from there); ``out``
    holds records of these ``settings`` only (``_folder``)."""
    records = out / RECORDS
    records.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "settings.json", json.dumps(settings, indent=2))
    done = set()
    for name, count in counts.items():
        path = records / f"{name}.csv"
        if path.is_file() and len(_read_shard(path)) == count:
            done.add(name)
    return done


def _evaluate_shards(model, data, e, levels: int, out: Path, counts: dict[str, int], done: set[str], device, bar):
    """This rank's share of the unfinished shards; each shard's records are written (atomically) when its last
    image is evaluated, so a killed evaluation loses only the shards in flight."""
    pending: dict[str, list] = {}
    batches = counted(data.eval_stream(e.split, e.batch_size, skip=frozenset(done)), bar)
    with evaluation_mode(model, device, e.precision):  # once for the whole stream, not once per batch
        for keys, images, shards in batches:
            result = per_image_nll_as_is(
                model, [(keys, images)], levels, e.num_samples, e.repeats, e.chunk_size, e.seed, device
            )
            ess = result.ess.tolist() if result.ess is not None else [None] * len(keys)
            for key, shard, nll, size in zip(keys, shards, result.nll.tolist(), ess, strict=True):
                pending.setdefault(shard, []).append((key, nll, size))
            for shard in set(shards):
                if len(pending[shard]) == counts[shard]:
                    _write_csv(out / RECORDS / f"{shard}.csv", ["key", "nll_nats", "ess"], pending.pop(shard))
    if pending:
        shard, rows = next(iter(pending.items()))
        raise DataError(f"{e.split} shard {shard}: delivered {len(rows)} of its {counts[shard]} samples")


@contextlib.contextmanager
def _said_on_interrupt(out: Path):
    """Ctrl-C or SIGTERM while shards are evaluated: what is kept, and that the same command goes on."""
    try:
        yield
    except KeyboardInterrupt:
        kept = len(list((out / RECORDS).glob("*.csv")))
        raise Interrupted(
            f"interrupted: the records of the {kept} shard(s) finished are kept in {out / RECORDS}; the same "
            "`aef-hpc eval` again evaluates only the others"
        ) from None


def _merge(out: Path, counts: dict[str, int], split: str) -> tuple[PerImage, list[str]]:
    """Rank 0: every shard's records, each manifest shard complete and every key exactly once."""
    keys, nll, ess, shard_of = [], [], [], []
    for name, count in counts.items():
        path = out / RECORDS / f"{name}.csv"
        rows = _read_shard(path) if path.is_file() else []
        if len(rows) != count:
            raise DataError(f"{split} shard {name}: {len(rows)} of its {count} images have records")
        keys += [r[0] for r in rows]
        nll += [r[1] for r in rows]
        ess += [r[2] for r in rows]
        shard_of += [name] * count
    if len(set(keys)) != len(keys):
        seen = set()
        twice = next(k for k in keys if k in seen or seen.add(k))
        raise DataError(f"{split} split: image {twice} appears twice (keys must be unique across shards)")
    has_ess = bool(ess) and ess[0] is not None
    result = PerImage(keys, torch.tensor(nll, dtype=torch.float64), torch.tensor(ess) if has_ess else None)
    return result, shard_of


def _write_csv(path: Path, header: list[str], rows) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([v if isinstance(v, str) else ("" if v is None else repr(v)) for v in row] for row in rows)
    write_atomic(path, text.getvalue())


def evaluate(trained: Trained, data) -> tuple[dict, Path]:
    """Evaluate ``trained`` on ``eval.split`` of ``data`` on every rank of the job, each its share of the shards
    (and its loader workers theirs); per-shard records as shards finish; rank 0 merges them (every image exactly
    once) into ``records.csv`` and ``summary.json``. Returns ``(summary, folder)`` on every rank. An image's numbers
    do not depend on the number of ranks (noise keyed by ``(eval.seed, key)``); a restarted evaluation skips the
    shards already recorded."""
    cfg, model, device = trained.cfg, trained.model, trained.device
    e = cfg.eval
    check_fid_weights(e.fid_weights)
    check_world(cfg, world_info()[1])
    started = time.monotonic()
    proposal = on_rank0(lambda: proposal_std(trained, data))  # one search, one writer of its file
    if proposal is not None:
        model.proposal_std.fill_(proposal["proposal_std"])
    settings = _settings(trained)
    out = on_rank0(lambda: _folder(trained, settings))
    rank, world = world_info()
    watch = lambda total: Progress(total, f"eval {e.split}", "image", 0, rank == 0, cfg.train.progress_every)  # noqa: E731
    if e.limit is not None:  # a prefix of one stream (one rank): no shard records
        with watch(min(e.limit, data.count(e.split))) as bar:
            batches = counted(limited(data.eval_batches(e.split, e.batch_size), e.limit), bar)
            result = per_image_nll(
                model, batches, data.levels, e.num_samples, e.repeats, e.chunk_size, e.seed, device, e.precision
            )
        shards, done = [""] * len(result.keys), set()
    else:
        counts = data.shard_counts(e.split)
        done = on_rank0(lambda: _finished_shards(out, counts, settings))
        left = sum(n for name, n in counts.items() if name not in done)
        with watch(-(-left // world)) as bar, _said_on_interrupt(out):  # rank 0's share, about
            on_every_rank(  # a rank that fails (a corrupt shard) stops every rank; nothing is merged
                lambda: _evaluate_shards(model, data, e, data.levels, out, counts, done, device, bar),
                f"evaluating the {e.split} split",
            )
        result, shards = on_rank0(lambda: _merge(out, counts, e.split))
    return on_rank0(lambda: _write(trained, data, result, shards, proposal, started, len(done), out, settings))


def _write(
    trained: Trained, data, result: PerImage, shards, proposal, started: float, reused: int, out: Path, settings
) -> tuple[dict, Path]:
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
        "image_shape": list(data.image_shape),
        "data_fingerprint": data.fingerprint(e.split),  # the same images: per-image records can be paired
        "ema_weights": trained.ema,
        "seed": e.seed,
        "world_size": world_info()[1],
        "shards_reused": reused,
    }
    if not model.exact_likelihood:
        summary.update(
            num_samples=e.num_samples,
            repeats=e.repeats,
            chunk_size=e.chunk_size,
            ess_min=result.ess.min().item(),
            ess_median=result.ess.median().item(),
        )
        _warn_low_ess(summary["ess_median"], summary["ess_min"], e.num_samples, model)
    if isinstance(model, ExpandedAEF):
        summary["proposal_std"] = float(model.proposal_std)
        summary["proposal_std_selected"] = proposal is not None
    summary.update(_image_metrics(trained, data))
    summary["seconds"] = round(time.monotonic() - started, 3)
    summary["settings"] = settings  # what makes these results these (their folder is chosen by it)

    out.mkdir(parents=True, exist_ok=True)
    ess = result.ess.tolist() if result.ess is not None else [None] * len(result.keys)
    rows = zip(result.keys, shards, result.nll.tolist(), bpd.tolist(), ess, strict=True)
    _write_csv(out / "records.csv", ["key", "shard", "nll_nats", "bits_per_dim", "ess"], rows)
    write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    # merged: the per-shard records only served an interrupted evaluation (a new one computes afresh)
    shutil.rmtree(out / RECORDS, ignore_errors=True)
    (out / "settings.json").unlink(missing_ok=True)
    return summary, out


def _warn_low_ess(median: float, smallest: float, k: int, model) -> None:
    """One line when the median effective sample size is under ``LOW_ESS`` of K: the estimate rests on a few
    draws per image (biased high, its spread understated)."""
    if median >= LOW_ESS * k:
        return
    fix = (
        "a tuned proposal std (eval.select_proposal_std=true, eval.proposal_stds)"
        if isinstance(model, ExpandedAEF)
        else "a better encoder"
    )
    warnings.warn(
        f"low importance-sampling effective sample size: median {median:.1f}, min {smallest:.1f} of K={k}; the NLL "
        f"estimate rests on a few draws per image (biased high): use more samples (eval.num_samples) or {fix}",
        AEFWarning,
        stacklevel=3,
    )


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
