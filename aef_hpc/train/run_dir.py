"""The run folder ``out_dir/name/`` (design.md, Runs): creation, ``env.json``, and the metrics log.

A run folder is created once and never written into again except by ``aef-hpc train --resume``. Metrics go to
``metrics.csv`` (``step, split, metric, value``) and to TensorBoard (``tensorboard/``); a resumed run first
drops every row and event after its checkpoint's step, so the log reads as one uninterrupted run.
"""

import contextlib
import csv
import datetime
import fcntl
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch

from ..config import Config, from_yaml
from ..engine.checkpoint import write_atomic
from ..errors import ConfigError

PACKAGES = ("torch", "numpy", "triton", "omegaconf", "webdataset", "deepspeed", "mpi4py", "tensorboard")


NO_CHECKPOINT = "NO_CHECKPOINT"
"""the file that marks a run folder stopped before its first checkpoint: its logs are kept, ``--resume`` starts it
over"""


FINISHED = "finished.json"
"""the file that marks a finished run (trained, its best checkpoint tested): its test result and where it lies"""


def mark_finished(run_dir: Path, best_step: int, summary: dict, eval_dir: Path) -> None:
    record = {"best_step": best_step, "bits_per_dim": summary["bits_per_dim"], "evaluation": str(eval_dir)}
    write_atomic(run_dir / FINISHED, json.dumps(record, indent=2))


def mark_no_checkpoint(run_dir: Path, why: str) -> None:
    """Keep a run that stopped before its first checkpoint (config, metrics, TensorBoard) and say so in it."""
    write_atomic(run_dir / NO_CHECKPOINT, f"{why}\n`aef-hpc train --resume {run_dir}` starts it over\n")


def stopped_before_first_checkpoint(run_dir: str | Path) -> bool:
    return (Path(run_dir) / NO_CHECKPOINT).is_file()


def start_over_config(run_dir: str | Path, overrides: list[str]) -> Config:
    """The config of a run that stopped before its first checkpoint, with ``key=value`` overrides, naming that
    folder as its run folder."""
    run_dir = Path(run_dir)
    try:
        text = (run_dir / "config.yaml").read_text()
    except OSError as exc:
        raise ConfigError(f"--resume {run_dir}: {exc.filename}: {exc.strerror}") from None
    cfg = from_yaml(text, overrides, where=str(run_dir / "config.yaml"))
    cfg.run.out_dir, cfg.run.name = str(run_dir.parent), run_dir.name
    return cfg


def new_run_dir(cfg: Config, start_over: bool = False) -> Path:
    """Create ``out_dir/name`` (``name`` defaults to ``<model>-<date>-<time>``); an existing folder is an error,
    except one that stopped before its first checkpoint when ``start_over``: its logs are dropped and it is reused."""
    path = Path(cfg.run.out_dir) / (cfg.run.name or f"{cfg.model.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    try:
        path.exists()
    except OSError as exc:
        raise ConfigError(f"run.out_dir={cfg.run.out_dir!r}: cannot create {path} ({exc.strerror})") from None
    if start_over and stopped_before_first_checkpoint(path):
        for name in ("metrics.csv", "tensorboard", "checkpoints", "config.yaml", NO_CHECKPOINT):
            shutil.rmtree(path / name) if (path / name).is_dir() else (path / name).unlink(missing_ok=True)
        return path
    if cfg.run.name is None:  # an automatic name never collides: -2, -3, ... within the same second
        base, n = path, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run.out_dir/run.name: {path} is a file, not a folder: choose another run.name")
    if path.exists() and any(path.iterdir()):
        how = "start it over" if stopped_before_first_checkpoint(path) else "continue it"
        raise ConfigError(
            f"run folder {path} exists: {how} with `aef-hpc train --resume {path}` or choose another run.name"
        )
    created = [p for p in path.parents if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        for folder in created:  # innermost first: leave nothing behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise ConfigError(f"run.out_dir={cfg.run.out_dir!r}: cannot create {path} ({exc.strerror})") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"run.out_dir={cfg.run.out_dir!r}: {path} is not writable")
    return path


def lock_run(run_dir: Path):
    """Hold an exclusive lock on ``run_dir/.lock`` while this process trains it (released when the returned file
    is closed or the process ends); a second ``train`` or ``--resume`` of the same folder stops with one line."""
    handle = open(run_dir / ".lock", "a+")
    try:  # a POSIX record lock: it dies with this process, not with forked data-loader workers that share the file
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(
            f"run folder {run_dir} is being trained by another process: wait for it, or stop it first"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def is_locked(run_dir: Path) -> bool:
    """A training process holds ``run_dir``'s lock (``lock_run``); only probed, never taken."""
    try:
        handle = open(run_dir / ".lock")
    except OSError:  # none, or unreadable: no lock this process can see
        return False
    with handle:
        try:  # a shared lock conflicts with the training's exclusive one
            fcntl.lockf(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.lockf(handle, fcntl.LOCK_UN)
    return False


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_env(run_dir: Path, device: torch.device, world_size: int, resumed_from: int | None) -> None:
    """Append this start's environment to ``env.json`` (a list: the first start, then one entry per resume)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    entry = {
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "resumed_from_step": resumed_from,
        "command": sys.argv,
        "git_revision": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
        "world_size": world_size,
        "host": socket.gethostname(),
    }
    path = run_dir / "env.json"
    entries = json.loads(path.read_text()) if path.exists() else []
    write_atomic(path, json.dumps([*entries, entry], indent=2))


class MetricsLog:
    """``metrics.csv`` plus TensorBoard scalars; ``resume_step`` drops what was logged after that step."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "metrics.csv"
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as handle:
                rows = [r for r in csv.reader(handle)][1:]
            kept = [r for r in rows if len(r) == 4 and r[0].isdigit() and int(r[0]) <= resume_step]
            write_atomic(self.path, "".join(",".join(r) + "\n" for r in [["step", "split", "metric", "value"], *kept]))
        fresh = not self.path.exists()
        self.handle = open(self.path, "a", newline="")
        self.csv = csv.writer(self.handle)
        if fresh:
            self.csv.writerow(["step", "split", "metric", "value"])
        purge = None if resume_step is None else resume_step + 1
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, split: str, metric: str, value: float) -> None:
        self.csv.writerow([step, split, metric, value])
        self.tensorboard.add_scalar(f"{split}/{metric}", value, step)

    def flush(self) -> None:
        self.handle.flush()
        self.tensorboard.flush()

    def close(self) -> None:
        self.handle.close()
        self.tensorboard.close()


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


class SilentLog:
    """The ``MetricsLog`` of ranks other than 0: rank 0 alone writes the run folder."""

    def log(self, step: int, split: str, metric: str, value: float) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
