"""Checkpoint folders that count only when complete (torchtitan's rule, Lightning's atomic write).

``RUN/checkpoints/step-NNNNNN/`` is written as ``.step-NNNNNN.tmp/``: every file is fsynced, ``meta.json`` (the
size and sha256 of every other file) is written last, the folder is renamed, and only then do the ``latest``
(and ``best``) pointer files change, each by an atomic rename. A folder without ``meta.json`` is never loaded;
one whose files differ from ``meta.json`` (cut by a kill, a full disk) is skipped with a warning naming it.

Several ranks (several nodes): each rank writes its share into its own staging folder ``.rank-R/`` inside the
temporary one, fsyncs and hashes exactly those files, moves them into place and sends their names, sizes and
sha256 to rank 0 through the collective; rank 0 commits only when every reported file is there with its size
(waiting out a shared file system's stale listing up to ``VISIBLE_WITHIN`` seconds), and ``meta.json`` lists
what the ranks reported, never what a directory listing happens to show.

A committed folder is never removed before its replacement is committed: rewriting a step (a requeue records
itself in the step just validated) moves the old folder aside to ``.step-NNNNNN.replaced``, renames the new one
in, then removes the old. So a kill at any point leaves the old or the new checkpoint of that step: readers take a
folder left aside as that step (they never rename or remove anything, so an ``eval`` beside a running job cannot
disturb its writes), and the writer puts it back (``recover``) before its next write, holding the run's lock.
"""

import datetime
import hashlib
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import AEFWarning, CheckpointError
from ..process_group import gathered_objects, on_every_rank, on_rank0, world_info

VISIBLE_WITHIN = 120.0
"""seconds rank 0 waits for a file another rank reported to show up (NFS attribute caches: up to a minute)"""
FORMAT = "aef_hpc-checkpoint"
VERSION = 1
_STEP = re.compile(r"^step-(\d+)$")


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, fsync it, rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    _fsync(tmp)
    os.replace(tmp, path)


def load_file(path: Path, keys: tuple[str, ...] = ()) -> dict:
    """``torch.load(weights_only=True)`` of a checkpoint file that must hold a dict (with ``keys``); anything else
    (not ours, damaged, another format) is one ``CheckpointError`` line naming the file."""
    try:
        with warnings.catch_warnings():  # torch's own warnings about a foreign pickle: the error below says it
            warnings.simplefilter("ignore")
            state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001  unpickling errors have many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a checkpoint file aef_hpc can read ({reason[:200]})") from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if not isinstance(state, dict) or missing:
        raise CheckpointError(f"{path} is not an aef_hpc checkpoint file (no {missing[0] if missing else 'dict'})")
    return state


@dataclass
class Checkpoint:
    """A complete checkpoint folder and its ``meta.json``."""

    path: Path
    meta: dict

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def run_dir(self) -> Path:
        """``RUN`` of ``RUN/checkpoints/step-N``; for a checkpoint folder kept elsewhere, the folder around it."""
        return self.path.parent.parent if self.path.parent.name == "checkpoints" else self.path.parent

    @property
    def name(self) -> str:
        """``step-NNNNNN``, also for a folder a kill left aside."""
        return step_name(self.step)

    def verify(self) -> None:
        """Raise ``CheckpointError`` unless every file has the size and sha256 that ``meta.json`` records."""
        for name, info in self.meta["files"].items():
            file = self.path / name
            if not file.is_file():
                raise CheckpointError(f"checkpoint {self.path}: {name} is missing")
            if file.stat().st_size != info["bytes"] or _sha256(file) != info["sha256"]:
                raise CheckpointError(f"checkpoint {self.path}: {name} is truncated or modified")


def save_checkpoint(
    run_dir: Path | None,
    step: int,
    write: Callable[[Path], None],
    meta: dict,
    keep_last: int,
    best: bool = False,
    root: Path | None = None,
) -> Checkpoint:
    """Write a checkpoint of ``step`` with ``write(folder)`` into ``run_dir/checkpoints`` (or ``root``), commit
    it, move the pointers, prune old ones.

    Collective when a process group is joined: rank 0 prepares the temporary folder (on a file system every rank
    sees), every rank's ``write`` adds its share (a ZeRO shard; rank-local RNG states), and rank 0 alone commits;
    a failure anywhere is raised on every rank (none is left waiting)."""
    root = Path(root) if root is not None else Path(run_dir) / "checkpoints"
    name = step_name(step)
    tmp = root / f".{name}.tmp"

    def prepare() -> None:
        root.mkdir(parents=True, exist_ok=True)
        recover(root)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()

    on_rank0(prepare)
    own = on_every_rank(lambda: _write_own_share(tmp, write), f"writing {tmp}")
    reported = gathered_objects(own)
    return on_rank0(lambda: _commit(root, name, tmp, step, meta, keep_last, best, reported))


def _write_own_share(tmp: Path, write: Callable[[Path], None]) -> dict:
    """This rank's ``write`` into its own staging folder; its files fsynced, hashed and moved into ``tmp``.
    Returns ``{relative path: {"bytes", "sha256"}}`` of exactly the files this rank wrote."""
    stage = tmp / f".rank-{world_info()[0]}"
    stage.mkdir()
    write(stage)
    files = {}
    for file in sorted(p for p in stage.rglob("*") if p.is_file()):
        _fsync(file)
        files[file.relative_to(stage).as_posix()] = {"bytes": file.stat().st_size, "sha256": _sha256(file)}
    for relative in files:
        target = tmp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / relative, target)
    for folder in {(tmp / relative).parent for relative in files}:
        _fsync(folder)
    shutil.rmtree(stage)
    return files


def _merged(reported: list[dict], tmp: Path) -> dict:
    """One listing of every rank's files; a name two ranks wrote, or a reported file that does not show up in
    ``tmp`` with its size within ``VISIBLE_WITHIN`` seconds, is a ``CheckpointError``."""
    files, owner = {}, {}
    for rank, own in enumerate(reported):
        for relative, info in own.items():
            if relative in files:
                raise CheckpointError(f"{tmp}: ranks {owner[relative]} and {rank} both wrote {relative}")
            files[relative], owner[relative] = info, rank
    deadline = time.monotonic() + VISIBLE_WITHIN
    for relative, info in sorted(files.items()):
        path = tmp / relative
        while not (path.is_file() and path.stat().st_size == info["bytes"]):
            if time.monotonic() > deadline:
                raise CheckpointError(
                    f"{path} (written by rank {owner[relative]}, {info['bytes']} bytes) is not visible to rank 0 "
                    f"after {VISIBLE_WITHIN:g} s: the run folder must be on a file system every node shares"
                )
            time.sleep(0.2)
    return files


def _commit(
    root: Path, name: str, tmp: Path, step: int, meta: dict, keep_last: int, best: bool, reported: list[dict]
) -> Checkpoint:
    files = _merged(reported, tmp)
    for folder in sorted({(tmp / relative).parent for relative in files} | {tmp}, reverse=True):
        _fsync(folder)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "step": step,
        **meta,
        "files": files,
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_atomic(tmp / "meta.json", json.dumps(meta, indent=2))
    _fsync(tmp)
    final, aside = root / name, _aside(root, name)
    if final.exists():  # a checkpoint of this step (a requeue's rewrite, an abandoned attempt): kept until replaced
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(final, aside)
    os.replace(tmp, final)
    _fsync(root)
    shutil.rmtree(aside, ignore_errors=True)
    write_atomic(root / "latest", name + "\n")
    if best:
        write_atomic(root / "best", name + "\n")
    _prune(root, keep_last)
    return Checkpoint(final, meta)


def point_best(run_dir: Path, step: int) -> None:
    """Point ``best`` at ``step``'s checkpoint when that exists (a resumed run repairs a pointer a kill cut off)."""
    root = Path(run_dir) / "checkpoints"
    name = step_name(step)
    if step and (root / name / "meta.json").exists() and _pointer(root, "best") != name:
        write_atomic(root / "best", name + "\n")


def _pointer(root: Path, name: str) -> str | None:
    try:
        return (root / name).read_text().strip() or None
    except OSError:
        return None


def _aside(root: Path, name: str) -> Path:
    return root / f".{name}.replaced"


def recover(root: Path) -> None:
    """The writer (rank 0, holding the run's lock): put back a committed folder that a kill left aside while its
    replacement was renamed in, or drop one whose replacement made it."""
    for path in Path(root).glob(".step-*.replaced"):
        final = path.with_name(path.name[1 : -len(".replaced")])
        if final.exists():
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.replace(path, final)


def _prune(root: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` complete checkpoints and the best one; remove the rest and stale temps."""
    keep = {c.name for c in _complete(root)[:keep_last]} | {_pointer(root, "best")}
    for path in root.iterdir():
        stale = path.name.startswith(".") and path.name.endswith(".tmp")
        if (path.is_dir() and _STEP.match(path.name) and path.name not in keep) or stale:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _read_meta(folder: Path) -> dict | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    ours = isinstance(meta, dict) and meta.get("format") == FORMAT
    return meta if ours and isinstance(meta.get("step"), int) and isinstance(meta.get("files"), dict) else None


def _complete(root: Path) -> list[Checkpoint]:
    """Folders ``step-N`` with a readable ``meta.json`` of ours, newest first (not verified); a step's folder that a
    kill left aside (``.step-N.replaced``) stands in for it while ``step-N`` is missing. Reads only."""
    found = {}
    if root.is_dir():
        for path in sorted(root.iterdir(), key=lambda p: p.name.startswith(".")):  # committed names first
            name = path.name[1 : -len(".replaced")] if path.name.endswith(".replaced") else path.name
            if path.is_dir() and _STEP.match(name) and name not in found and (meta := _read_meta(path)) is not None:
                found[name] = Checkpoint(path, meta)
    return sorted(found.values(), key=lambda c: c.step, reverse=True)


def complete_checkpoints(run_dir: Path) -> list[Checkpoint]:
    return _complete(Path(run_dir) / "checkpoints")


def _first_intact(candidates: list[Checkpoint]) -> Checkpoint | None:
    for candidate in candidates:
        try:
            candidate.verify()
            return candidate
        except CheckpointError as exc:
            warnings.warn(f"skipping {exc}; using an older checkpoint", AEFWarning, stacklevel=3)
    return None


def find_resumable(run_dir: str | Path) -> Checkpoint:
    """The newest intact checkpoint of a run folder, or one ``CheckpointError`` line saying why there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"--resume {run_dir}: no such run folder")
    found = _first_intact(complete_checkpoints(run_dir))
    if found is None:
        raise CheckpointError(
            f"--resume {run_dir}: no complete checkpoint in {run_dir / 'checkpoints'} (one is written at every "
            "validation): start a new run instead (delete this folder, or choose another run.name)"
        )
    return found


def open_checkpoint(path: str | Path) -> Checkpoint:
    """A run folder (its best checkpoint, else its newest intact one) or one checkpoint folder, verified."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: give a run folder (runs/NAME) or a checkpoint folder")
    if path.is_file():
        raise CheckpointError(
            f"{path} is a file, not an aef_hpc run folder or checkpoint folder (runs/NAME/checkpoints/step-N)"
        )
    if (path / "meta.json").exists():
        meta = _read_meta(path)
        if meta is None:
            raise CheckpointError(f"{path}/meta.json is not an aef_hpc checkpoint's: give a run or checkpoint folder")
        checkpoint = Checkpoint(path, meta)
        checkpoint.verify()
        return checkpoint
    root = path / "checkpoints"
    best = _pointer(root, "best")
    candidates = complete_checkpoints(path)
    if best is not None:
        if best not in {c.name for c in candidates}:
            warnings.warn(
                f"{root / 'best'} names {best}, which is missing or incomplete: using the newest checkpoint instead",
                AEFWarning,
                stacklevel=2,
            )
        candidates = [c for c in candidates if c.name == best] + [c for c in candidates if c.name != best]
    found = _first_intact(candidates)
    if found is None:
        raise CheckpointError(f"{path} holds no complete aef_hpc checkpoint (expected {root}/step-N/meta.json)")
    return found
