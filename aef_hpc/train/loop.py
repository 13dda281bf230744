"""The training loop, top to bottom: data -> model -> engine -> steps (validation and checkpoints on the way)
-> the final test of the best checkpoint, its sample grid and the training curves.

Usage: ``aef-hpc train [--config FILE] [key=value ...]`` or ``aef-hpc train --resume RUN_DIR [key=value ...]``.
A resumed run continues from its newest intact checkpoint and ends bit-identical to an uninterrupted one: the
checkpoint holds the model, optimizer, schedule, EMA, step, epoch and batch within it, and every RNG state.
"""

import contextlib
import dataclasses
import itertools
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config, to_yaml
from ..data import dequantize_keyed, keyed_normal, open_data
from ..engine import Checkpoint, SingleEngine, complete_checkpoints, open_checkpoint, save_checkpoint
from ..engine.checkpoint import load_file, point_best, recover, step_name, write_atomic
from ..engine.ddp import DDPEngine
from ..engine.deepspeed import DeepSpeedEngine, deepspeed_config, model_scope
from ..errors import AEFError, CheckpointError, ConfigError, DataError, Interrupted, OutOfMemory, out_of_memory
from ..evaluate import (
    check_fid_weights,
    check_same_data,
    evaluate,
    mean_loss,
    resolve_device,
    restore_checkpoint,
    training_curves,
    write_samples,
)
from ..kernels import check_available, use_kernels
from ..metrics import bits_per_dim
from ..models.from_config import model_from_config
from ..noise import model_noise
from ..process_group import (
    ProcessInfo,
    any_rank,
    barrier,
    discover,
    init_distributed,
    leave_distributed,
    mean_over_ranks,
    on_rank0,
    world_sum,
)
from ..progress import Progress
from ..signals import CheckpointRequest, sigterm_as_interrupt
from .collective import initialize_collectively, rank_file
from .ema import EMA
from .run_dir import (
    FINISHED,
    MetricsLog,
    SilentLog,
    lock_run,
    mark_finished,
    mark_no_checkpoint,
    new_run_dir,
    read_metrics,
    write_env,
)
from .schedule import build_scheduler


class TrainingDiverged(AEFError):
    """Too many bad steps in a row, or no finite validation."""


class Preempted(AEFError):
    """SIGUSR1: a checkpoint was written at a step boundary and (under SLURM) the job requeued."""

    exit_code = 75  # EX_TEMPFAIL: try again


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint (``train_state.pt``) with the RNG states and EMA."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped_samples: int = 0
    skipped_steps: int = 0
    skips_in_row: int = 0
    best_val: float = math.inf
    best_step: int = 0
    last_val: dict = field(default_factory=dict)
    loss_sum: float = 0.0
    """rank 0's objective summed (float64) over the steps since the last log line, and their count; every rank
    keeps its own exact sum in its rank file (``rank_state``)"""
    loss_count: int = 0
    requeues: int = 0
    """how often SIGUSR1 requeued this run under SLURM (capped by run.max_requeues)"""
    validation_due: bool = False
    """a validation fell inside a run of skipped steps and runs at the next good step"""
    stopped_early: bool = False


@dataclass
class RunResult:
    run_dir: Path
    loss_name: str
    best_val_loss: float
    best_step: int
    summary: dict
    eval_dir: Path
    figures: list[Path]


def check_data_matches_model(data, cfg: Config) -> Config:
    """The data's image shape and bit depth against the model config (when set); returns the config with both
    recorded, so the run folder says what was actually used."""
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
    cfg.model.image_shape, cfg.model.bit_depth = list(data.image_shape), bits
    return cfg


def check_batch_fits(data, cfg: Config, world_size: int) -> None:
    """One batch of every rank together must not be larger than the training split (it would repeat images)."""
    images, held = cfg.train.batch_size * world_size, data.count("train")
    if images > held:
        ranks = f" x {world_size} ranks" if world_size > 1 else ""
        raise DataError(
            f"train.batch_size={cfg.train.batch_size}{ranks} = {images} images per batch, but the training split "
            f"holds {held}: every batch would repeat images; use train.batch_size <= {held // world_size}"
        )


def training_batches(data, batch_size: int, epoch: int, start: int):
    """``(epoch, index, Batch)`` forever, from batch ``start`` of ``epoch`` on."""
    while True:
        if start >= data.batches_per_epoch(batch_size):
            epoch, start = epoch + 1, 0
            continue
        for index, batch in enumerate(data.train_epoch(epoch, batch_size, start), start):
            yield epoch, index, batch
        epoch, start = epoch + 1, 0


def training_inputs(batch, levels: int, seed: int, epoch: int, noise_std: float, device) -> torch.Tensor:
    """Dequantized (and, for denoising, noised: method.md §4.3 ``clamp(x + N(0, std^2), 0, 1)``) images; both
    noises are keyed by ``(seed, epoch, sample id)``, so a sample gets the same ones on any rank."""
    ids = batch.ids.to(device)
    x = dequantize_keyed(batch.images.to(device, non_blocking=True), levels, ids, seed, epoch)
    if noise_std > 0:
        x = (x + noise_std * keyed_normal(ids, x.shape[1:], seed, epoch, 1)).clamp(0, 1)
    return x


def train(
    cfg: Config, progress: bool = True, resume: Checkpoint | None = None, start_over: bool = False
) -> RunResult | None:
    """Train (on every rank of a job: see ``process_group``); rank 0 returns the result, other ranks ``None``.
    ``resume``: continue from that checkpoint; ``start_over``: train the run folder of ``cfg.run`` anew, which
    stopped before its first checkpoint."""
    with use_kernels(cfg.kernels), sigterm_as_interrupt(), CheckpointRequest() as request:
        return _train(cfg, progress, resume, start_over, request)


def _check_world(cfg: Config, info, resume: Checkpoint | None, ds_config: dict | None) -> None:
    if info.distributed and cfg.engine == "single":
        raise ConfigError(
            f"{info.world_size} processes were started ({info.source}) but engine=single trains in one: set "
            "engine=ddp or engine=deepspeed, or start one process"
        )
    if resume is not None:
        stage = None if ds_config is None else ds_config["zero_optimization"].get("stage", 0)
        saved = (resume.meta.get("engine", "single"), resume.meta.get("world_size", 1), resume.meta.get("zero_stage"))
        if saved != (cfg.engine, info.world_size, stage):
            zero = lambda s: "" if s is None else f" (ZeRO stage {s})"  # noqa: E731
            raise CheckpointError(
                f"--resume {resume.run_dir}: its checkpoints were written by engine={saved[0]}{zero(saved[2])} on "
                f"{saved[1]} process(es), this job is engine={cfg.engine}{zero(stage)} on {info.world_size}: resume "
                "with the same engine, stage and process count (`aef-hpc export` makes any checkpoint one file "
                "that eval and sample open)"
            )


def _build_engine(cfg: Config, model, ds_config):
    t = cfg.train
    if cfg.engine == "deepspeed":
        return DeepSpeedEngine(model, ds_config, lambda optimizer: build_scheduler(optimizer, t), t.skip_threshold)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    kind = DDPEngine if cfg.engine == "ddp" else SingleEngine
    return kind(model, optimizer, build_scheduler(optimizer, t), t.grad_clip, t.accumulate, t.skip_threshold,
                t.compile, t.precision)  # fmt: skip


def check_launch(cfg: Config, resume: Checkpoint | None = None) -> tuple[ProcessInfo, dict | None, torch.device]:
    """What can be checked before any data is read: the DeepSpeed preset, the engine against the process count
    (and a resumed run's), the device and kernels, the FID weights. Returns the process, DeepSpeed dict, device."""
    info = discover()
    ds_config = deepspeed_config(cfg) if cfg.engine == "deepspeed" else None
    _check_world(cfg, info, resume, ds_config)
    device = resolve_device(cfg.train.device)
    check_available(cfg.kernels, device)
    check_fid_weights(cfg.eval.fid_weights)
    return info, ds_config, device


def _train(cfg: Config, progress: bool, resume: Checkpoint | None, start_over: bool, request) -> RunResult | None:
    # -- everything that can be wrong with the input fails here, before a file is written ----------------------
    info, ds_config, device = check_launch(cfg, resume)
    data = open_data(cfg.data)
    cfg = check_data_matches_model(data, cfg)
    check_batch_fits(data, cfg, info.world_size)
    if resume is not None:
        check_same_data(resume, data)
    dropped = data.verify()  # every shard's size and checksum, before anything is written or trained
    device = init_distributed(info, device, force=cfg.engine != "single")
    lock = {}  # rank 0's hold on the run folder, until its final test is written
    try:
        try:
            result = _train_ranks(
                cfg, progress, resume, start_over, info, ds_config, device, data, dropped, request, lock
            )
            barrier()
        finally:
            leave_distributed()
        if info.rank != 0:
            return None
        try:  # one process: the test evaluation and figures of the best checkpoint
            return finish(*result)
        except (KeyboardInterrupt, Interrupted):
            raise Interrupted(
                f"interrupted during the final test; training is complete: `aef-hpc eval {result[0]}` finishes it "
                "(the shards it had evaluated are kept)"
            ) from None
    finally:
        for handle in lock.values():  # the run folder's lock, released
            handle.close()


@dataclass
class Training:
    """One rank's training: what it trains, where it writes, and where it stands (``state``, saved in every
    checkpoint). ``_train_ranks`` reads top to bottom; each part of a step is a named function of this object."""

    cfg: Config
    info: ProcessInfo
    device: torch.device
    data: object
    model: torch.nn.Module
    engine: object
    ema: EMA | None
    state: TrainState
    run_dir: Path
    log: MetricsLog | SilentLog
    batches: Iterator
    running: torch.Tensor
    """this rank's objective summed (float64) over the steps since the last log line, and their count"""
    counted: int
    saved_step: int | None = None
    """the step of the newest checkpoint this process wrote"""

    @property
    def main(self) -> bool:
        return self.info.rank == 0


def _train_ranks(
    cfg: Config, progress: bool, resume, start_over, info, ds_config, device, data, dropped, request, lock
):
    tr = _start(cfg, resume, start_over, info, ds_config, device, data, dropped, lock)
    t, state = cfg.train, tr.state
    bar = Progress(t.steps, f"train {cfg.model.name}", "step", state.step, progress and tr.main, t.progress_every)
    if state.stopped_early and not (t.patience and state.step - state.best_step >= t.patience):
        state.stopped_early = False  # resumed with a larger (or no) patience: training goes on
    last = state.step if state.stopped_early else t.steps
    try:
        for step in range(state.step + 1, last + 1):
            result = _take_step(tr, step)
            _count_step(tr, step, result)
            if step % t.log_every == 0 and tr.counted:
                _log_training(tr, step, result, bar)
            # no validation or checkpoint inside a run of skipped steps (the newest checkpoint stays a good one):
            # a validation due then runs at the next good step
            state.validation_due |= step % t.val_every == 0 or step == t.steps
            if state.validation_due and not state.skips_in_row:
                _validate_and_checkpoint(tr, step, bar)
            elif t.checkpoint_every and step % t.checkpoint_every == 0 and not state.skips_in_row:
                tr.log.flush()
                _checkpoint(tr, best=False)
            if any_rank(request.pending()):  # every rank stops at the same step boundary
                _stop_for_requeue(tr)
            bar.update()
            if state.stopped_early:
                break
        _check_finished(tr)
    except BaseException as exc:
        bar.close()
        tr.log.close()
        explained = _explain_stop(tr, exc, new_run=resume is None)
        if explained is None:
            raise
        raise explained from None
    bar.close()
    tr.log.close()
    tr.engine.close()  # the training state is given back before the final test loads the best weights
    return tr.run_dir, cfg, data, state.best_step


def _start(cfg: Config, resume, start_over: bool, info, ds_config, device, data, dropped: int, lock: dict) -> Training:
    """The model (ActNorm initialised from the global first batch, unless resumed), its engine and EMA, and the
    run folder: a new one, or the state of the run being resumed."""
    d, t = cfg.data, cfg.train
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    with model_scope(ds_config):
        model = model_from_config(cfg.model, data.image_shape).to(device)
    batches = training_batches(data, t.batch_size, 0, 0)
    if resume is None:  # ActNorm from the global first batch, before the engine copies or partitions the model
        epoch, index, first = next(batches)
        initialize_collectively(model, training_inputs(first, data.levels, t.seed, epoch, d.noise_std, device))
        batches = itertools.chain([(epoch, index, first)], batches)
    engine = _build_engine(cfg, model, ds_config)
    ema = EMA(model, t.ema_rate) if t.ema_rate > 0 else None
    state = TrainState(skipped_samples=dropped)
    # rank 0 claims the folder (its errors are raised on every rank: none waits for it in a collective)
    run_dir = on_rank0(lambda: _claim_run_dir(cfg, resume, start_over, lock))
    if resume is not None:
        engine.load(resume.path)
        state = _load_train_state(resume.path, ema, device)
        batches = training_batches(data, t.batch_size, state.epoch, state.batch_in_epoch)
    on_rank0(lambda: _describe_run(run_dir, cfg, state, resume, device, info.world_size))
    log = MetricsLog(run_dir, None if resume is None else state.step) if info.rank == 0 else SilentLog()
    running = torch.tensor(state.loss_sum, dtype=torch.float64, device=device)
    return Training(
        cfg, info, device, data, model, engine, ema, state, run_dir, log, batches, running, state.loss_count
    )


def _claim_run_dir(cfg: Config, resume, start_over: bool, lock: dict) -> Path:
    """Rank 0: a new run folder (or the resumed one, or the one started over), locked until the final test is
    written."""
    if start_over:  # locked before its old logs go: a second start-over of the same folder stops with one line
        lock["run"] = lock_run(Path(cfg.run.out_dir) / cfg.run.name)
        return new_run_dir(cfg, start_over)
    run_dir = new_run_dir(cfg) if resume is None else resume.run_dir
    lock["run"] = lock_run(run_dir)
    return run_dir


def _describe_run(run_dir: Path, cfg: Config, state: TrainState, resume, device, world_size: int) -> None:
    """Rank 0: the resolved config and this start's environment; on resume, a folder left aside put back and the
    ``best`` pointer repaired."""
    if resume is not None:  # every rank has loaded: a step a kill left aside can go back under its name
        recover(run_dir / "checkpoints")
        point_best(run_dir, state.best_step)  # a kill may have fallen between a best checkpoint and its pointer
        print(f"resuming {run_dir} from {resume.path.name}", file=sys.stderr)
        (run_dir / FINISHED).unlink(missing_ok=True)  # trained further (e.g. more steps): finished again at its end
    write_atomic(run_dir / "config.yaml", to_yaml(cfg))
    write_env(run_dir, device, world_size=world_size, resumed_from=None if resume is None else state.step)


def _take_step(tr: Training, step: int):
    """``train.accumulate`` micro-batches, then the engine's step (or skip): its ``StepResult``."""
    t, state = tr.cfg.train, tr.state
    tr.model.train()
    for _ in range(t.accumulate):
        epoch, index, batch = next(tr.batches)
        state.skipped_samples += batch.skipped
        x = training_inputs(batch, tr.data.levels, t.seed, epoch, tr.cfg.data.noise_std, tr.device)
        noise = model_noise(batch.ids.to(tr.device), t.seed, epoch)  # by sample: any rank count agrees
        result = tr.engine.backward_and_step(tr.engine.loss(x, noise).mean())
    state.step, state.epoch, state.batch_in_epoch = step, epoch, index + 1
    return result


def _count_step(tr: Training, step: int, result) -> None:
    """A taken step joins the logged mean and the EMA; ``train.max_skips`` skipped in a row stop the run."""
    state, t = tr.state, tr.cfg.train
    if result.stepped:
        state.skips_in_row = 0
        tr.running, tr.counted = tr.running + result.loss.detach().double(), tr.counted + 1
        if tr.ema is not None:
            tr.ema.update()
        return
    state.skipped_steps += 1
    state.skips_in_row += 1
    tr.log.log(step, "train", "skipped_step_grad_norm", result.grad_norm.item())
    if state.skips_in_row >= t.max_skips:
        good = complete_checkpoints(tr.run_dir)
        kept = f"the last good checkpoint is {good[0].path}" if good else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"{state.skips_in_row} steps in a row were skipped (loss or gradient norm not finite or above "
            f"train.skip_threshold={t.skip_threshold}) at step {step}: lower train.lr or raise "
            f"train.skip_threshold; {kept}"
        )


def _log_training(tr: Training, step: int, result, bar: Progress) -> None:
    """The mean objective over ranks and steps since the last line (one host synchronisation), LR and counts."""
    state, objective = tr.state, tr.model.loss_name
    value = mean_over_ranks(tr.running / tr.counted).item()
    tr.running, tr.counted = torch.zeros((), dtype=torch.float64, device=tr.device), 0
    tr.log.log(step, "train", objective, value)
    tr.log.log(step, "train", "lr", result.lr)
    tr.log.log(step, "train", "epoch", state.epoch)
    tr.log.log(step, "train", "skipped_samples", round(world_sum(state.skipped_samples)))
    tr.log.log(step, "train", "skipped_steps", state.skipped_steps)
    shown = {objective: f"{value:.2f}"}
    if objective in ("nll", "neg_elbo", "neg_iwae_bound"):
        shown["bpd"] = f"{bits_per_dim(value, tr.model.num_dims, tr.data.levels):.3f}"
    bar.show(**shown)


def _validate_and_checkpoint(tr: Training, step: int, bar: Progress) -> None:
    """The validation objective (EMA weights when kept), the best step and early stopping, then a checkpoint."""
    state, t, objective = tr.state, tr.cfg.train, tr.model.loss_name
    state.validation_due = False
    with tr.ema.applied() if tr.ema is not None else contextlib.nullcontext():
        tr.model.eval()
        batches = tr.data.eval_batches("val", tr.cfg.eval.batch_size)
        idle = torch.full((1, *tr.model.image_shape), 0.5) if tr.engine.forward_is_collective else None
        val = mean_loss(tr.engine.eval_loss, batches, tr.data.levels, tr.cfg.eval.seed, tr.device, idle)
    tr.log.log(step, "val", objective, val)
    state.last_val = {objective: val}
    bar.show(val=f"{val:.2f}")
    best = math.isfinite(val) and val < state.best_val
    if best:
        state.best_val, state.best_step = val, step
    state.stopped_early = bool(t.patience) and step - state.best_step >= t.patience and step < t.steps
    if state.stopped_early:
        tr.log.log(step, "train", "early_stop", 1)
    tr.log.flush()  # the log first: a kill during the checkpoint loses no line written before it
    _checkpoint(tr, best)


def _checkpoint(tr: Training, best: bool) -> None:
    """A checkpoint of this step on every rank (collective): the engine's state, each rank's RNG states and exact
    partial loss sum, and (rank 0) the training state, EMA and config."""
    state = tr.state
    # each rank's own exact float64 partial sum: a resumed rank adds the same losses to the same value
    state.loss_sum, state.loss_count = tr.running.item(), tr.counted
    tr.saved_step = state.step

    def write(folder: Path) -> None:
        tr.engine.save(folder)
        torch.save({**_rng_state(tr.device), "loss_sum": state.loss_sum}, rank_file(folder, "rng"))
        if tr.main:
            ema = None if tr.ema is None else tr.ema.state_dict()
            torch.save({**vars(state), "ema": ema}, folder / "train_state.pt")
            (folder / "config.yaml").write_text(to_yaml(tr.cfg))

    meta = {
        "epoch": state.epoch,
        "batch_in_epoch": state.batch_in_epoch,
        "engine": tr.engine.name,
        "world_size": tr.info.world_size,
        "zero_stage": getattr(tr.engine, "stage", None),
        "requeues": state.requeues,
        "model": tr.cfg.model.name,
        "image_shape": list(tr.data.image_shape),
        "levels": tr.data.levels,
        "validation": state.last_val or None,
    }
    save_checkpoint(tr.run_dir, state.step, write, meta, tr.cfg.run.keep_last, best)


def _check_finished(tr: Training) -> None:
    """A run ends with at least one finite validation, so that its best checkpoint exists."""
    state, t, objective = tr.state, tr.cfg.train, tr.model.loss_name
    if not state.last_val:
        raise TrainingDiverged(
            f"no validation ran: every one fell inside a run of skipped steps (train.skip_threshold="
            f"{t.skip_threshold}); lower train.lr or raise train.skip_threshold"
        )
    if not math.isfinite(state.best_val):
        raise TrainingDiverged(
            f"every validation of {objective} was non-finite (last: {state.last_val.get(objective)}): no best "
            "checkpoint to evaluate; lower train.lr, set train.skip_threshold, or check the data"
        )


def _explain_stop(tr: Training, exc: BaseException, new_run: bool) -> BaseException | None:
    """What a stopped run says (``None``: the error as it is). A new run that stopped before its first checkpoint
    keeps its logs and is marked so; ``--resume`` starts it over. A failed allocation is an ``OutOfMemory``."""
    exc = out_of_memory(exc) or exc
    step, found = tr.state.step, complete_checkpoints(tr.run_dir)
    if new_run and not found:
        why = f"stopped at step {step}, before the first checkpoint (every train.val_every={tr.cfg.train.val_every})"
        if tr.main:
            mark_no_checkpoint(tr.run_dir, why)
        again = f"its logs are kept in {tr.run_dir}; `aef-hpc train --resume {tr.run_dir}` starts it over"
        if isinstance(exc, KeyboardInterrupt):
            return Interrupted(f"interrupted at step {step}, before the first checkpoint: {again}")
        if isinstance(exc, Preempted):
            return Preempted(f"SIGUSR1 at step {step}, before the first checkpoint: {again} (a requeued job does)")
        if isinstance(exc, AEFError):  # diverged: the same run with other keys (`--resume RUN train.lr=...`)
            return type(exc)(f"{exc}; {again} (key=value arguments change its config)")
        return None
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted(
            f"interrupted at step {step}; the newest checkpoint is {found[0].path}: continue with "
            f"`aef-hpc train --resume {tr.run_dir}`"
        )
    if isinstance(exc, OutOfMemory):
        return OutOfMemory(
            f"{exc}; at step {step}: the newest checkpoint is {found[0].path}, `aef-hpc train --resume "
            f"{tr.run_dir}` goes on from it"
        )
    return None


def _stop_for_requeue(tr: Training) -> None:
    """Checkpoint now and, under SLURM, requeue the job (rank 0: ``scontrol requeue``; its rerun resumes from the
    checkpoint), at most ``run.max_requeues`` times; raises ``Preempted``."""
    state, cfg = tr.state, tr.cfg
    job = os.environ.get("SLURM_JOB_ID")
    requeue = job is not None and state.requeues < cfg.run.max_requeues
    state.requeues += requeue
    # inside a run of skipped steps the newest checkpoint stays the last good one; a checkpoint of this very step
    # is written again only to record the requeue
    if not state.skips_in_row and (requeue or tr.saved_step != state.step):
        tr.log.flush()
        _checkpoint(tr, best=False)
    kept = f"checkpoint at step {state.step}" if not state.skips_in_row else "the last good checkpoint"
    if not requeue:
        why = "not under SLURM" if job is None else f"run.max_requeues={cfg.run.max_requeues} reached"
        raise Preempted(f"checkpoint requested: stopped with a {kept}; no requeue ({why}): continue with --resume")
    if tr.main:  # said first: SLURM stops this job's steps as soon as the requeue is accepted
        print(
            f"aef-hpc: SIGUSR1: {kept} written; requeueing job {job} ({state.requeues} of {cfg.run.max_requeues})",
            file=sys.stderr,
            flush=True,
        )
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if done.returncode:
            raise Preempted(f"SIGUSR1: {kept} written, but `scontrol requeue {job}` failed: {done.stderr.strip()}")
    raise Preempted(f"SIGUSR1: {kept} written; job {job} requeued ({state.requeues} of {cfg.run.max_requeues})")


def finish(run_dir: Path, cfg: Config, data, best_step: int) -> RunResult:
    """The best checkpoint's test evaluation, sample grid and the training curves: the same code as
    ``aef-hpc eval`` and ``aef-hpc sample``, so those reproduce these numbers."""
    trained = restore_checkpoint(open_checkpoint(run_dir / "checkpoints" / step_name(best_step)), cfg)
    summary, eval_dir = evaluate(trained, data)
    figures = write_samples(trained, data, cfg.eval.grid_samples, cfg.eval.temperature, seed=cfg.eval.seed)
    figures.append(
        training_curves(
            read_metrics(run_dir),
            trained.model.loss_name,
            trained.model.num_dims,
            data.levels,
            run_dir / "samples" / "curves.png",
        )
    )
    best_val = trained.checkpoint.meta["validation"][trained.model.loss_name]
    mark_finished(run_dir, trained.checkpoint.step, summary, eval_dir)  # last: a sweep skips this run from now on
    return RunResult(run_dir, trained.model.loss_name, best_val, trained.checkpoint.step, summary, eval_dir, figures)


def _rng_state(device) -> dict:
    """This rank's RNG states."""
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _load_train_state(folder: Path, ema, device) -> TrainState:
    saved = load_file(folder / "train_state.pt", ("ema", "step"))
    own = rank_file(folder, "rng")  # checkpoints of one process before rank files kept it in train_state.pt
    rng = load_file(own, ("torch",)) if own.exists() or "rng" not in saved else saved.pop("rng")
    ema_state = saved.pop("ema")
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    if ema is not None:
        ema.load_state_dict(ema_state)
    known = {f.name for f in dataclasses.fields(TrainState)}
    state = TrainState(**{k: v for k, v in saved.items() if k in known})
    state.loss_sum = rng.get("loss_sum", state.loss_sum)  # this rank's own (older checkpoints: the mean over ranks)
    return state
