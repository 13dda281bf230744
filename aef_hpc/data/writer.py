"""``aef-hpc shards``: convert a source into webdataset tar shards plus ``manifest.json``.

Each shard is written under ``<name>.tmp`` and renamed when complete; the manifest is written last, so an
interrupted run never leaves a half-written shard under its final name nor a manifest that lies.
"""

import hashlib
import io
import math
import os
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from .codec import encode_image
from .manifest import SPLITS, Manifest, ShardInfo
from .sources import Source, open_source


def assign_splits(source: Source, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list]:
    """Keep a source's own split (carving a validation split from train if it has none); otherwise a seeded
    random permutation (as ``digits.split``). Index order within each split."""
    if all(item.split is not None for item in source.items):
        groups = {s: [i for i in source.items if i.split == s] for s in SPLITS}
        if not groups["val"] and len(groups["train"]) > 1:  # e.g. torchvision's train/test: carve val from train
            order = torch.randperm(len(groups["train"]), generator=torch.Generator().manual_seed(seed)).tolist()
            n_val = max(1, round(len(order) * val_fraction))
            picked = set(order[:n_val])
            groups["val"] = [item for k, item in enumerate(groups["train"]) if k in picked]
            groups["train"] = [item for k, item in enumerate(groups["train"]) if k not in picked]
        return {s: v for s, v in groups.items() if v}
    n = len(source.items)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if min(n_val, n_test, n - n_val - n_test) < 1 and n >= 3:
        raise DataError(f"splitting {n} images into val={val_fraction}, test={test_fraction} leaves an empty split")
    parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    return {s: [source.items[i] for i in sorted(idx)] for s, idx in parts.items() if idx}


def _resize(image: np.ndarray, resolution: int) -> np.ndarray:
    pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    resized = np.asarray(Image.fromarray(pixels).resize((resolution, resolution), Image.BICUBIC))
    return resized[None] if resized.ndim == 2 else np.ascontiguousarray(resized.transpose(2, 0, 1))


class _ShardFile:
    """One tar shard being written to ``<name>.tmp``; ``close`` renames it and returns its ``ShardInfo``."""

    def __init__(self, out_dir: Path, name: str):
        self.path, self.tmp = out_dir / name, out_dir / (name + ".tmp")
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def add(self, key: str, files: dict[str, bytes]) -> None:
        for ext, data in files.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(data), 0o444, 0
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> ShardInfo:
        self.tar.close()
        digest = hashlib.sha256(self.tmp.read_bytes()).hexdigest()
        os.replace(self.tmp, self.path)
        return ShardInfo(self.path.name, self.count, digest, self.path.stat().st_size)


def write_shards(
    spec: str,
    out_dir: str | Path,
    encoding: str = "png",
    resolution: int | None = None,
    samples_per_shard: int = 1000,
    shard_size_mb: float | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 3,
    progress: bool = True,
    overwrite: bool = False,
) -> Manifest:
    """Write ``out_dir/{split}-NNNNNN.tar`` and ``out_dir/manifest.json``; return the manifest.

    The shards are written into ``out_dir/.partial/`` and moved into place when all are complete, the manifest
    last: a failed or interrupted run leaves no partial shard, and no folder it created (a staging folder left
    by a kill is removed by the next run). A non-empty ``out_dir`` is refused unless ``overwrite``, which removes
    the old dataset's manifest (first) and shards, and nothing else.
    """
    if encoding not in ("png", "npy"):
        raise DataError(f"encoding {encoding!r} is unknown: use png or npy")
    if samples_per_shard < 1 or (shard_size_mb is not None and not 0 < shard_size_mb < math.inf):
        raise DataError("samples per shard and shard size must be positive")
    if resolution is not None and resolution < 1:
        raise DataError(f"--resolution {resolution} must be a positive number of pixels")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(
            f"--val-fraction {val_fraction} and --test-fraction {test_fraction} must be in [0, 1) "
            "and sum to less than 1"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} is a file, not a folder: choose another output folder")
    staging = out_dir / ".partial"
    if out_dir.is_dir() and any(p != staging for p in out_dir.iterdir()) and not overwrite:
        what = "a dataset (manifest.json)" if (out_dir / "manifest.json").exists() else "files"
        raise DataError(f"{out_dir} already holds {what}: choose another folder, or pass --overwrite to replace it")
    created = [p for p in [out_dir, *out_dir.parents] if not p.exists()]  # removed again on failure
    try:
        staging.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging)  # what a killed run left
        staging.mkdir()
    except OSError as exc:
        raise DataError(f"cannot write into {out_dir} ({exc.strerror}): choose a writable folder") from None
    try:
        manifest = _write_all(
            spec,
            staging,
            encoding,
            resolution,
            samples_per_shard,
            shard_size_mb,
            val_fraction,
            test_fraction,
            seed,
            progress,
        )
        _remove_dataset(out_dir)
        for split in manifest.splits.values():
            for shard in split:
                os.replace(staging / shard.name, out_dir / shard.name)
        os.replace(staging / "manifest.json", out_dir / "manifest.json")
        staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return manifest


def _remove_dataset(out_dir: Path) -> None:
    """Remove an old dataset from ``out_dir``: its manifest first (the folder stops being a dataset at once), then
    its shards; nothing else."""
    manifest = out_dir / "manifest.json"
    if not manifest.exists():
        return
    try:
        names = [s.name for shards in Manifest.load(manifest).splits.values() for s in shards]
    except DataError:
        names = []
    manifest.unlink()
    for name in names:
        (out_dir / name).unlink(missing_ok=True)


def _write_all(
    spec,
    out_dir: Path,
    encoding,
    resolution,
    samples_per_shard,
    shard_size_mb,
    val_fraction,
    test_fraction,
    seed,
    progress,
) -> Manifest:
    source = open_source(spec)
    if not source.items:
        raise DataError(f"{spec} holds no images")
    splits = assign_splits(source, val_fraction, test_fraction, seed)
    max_bytes = None if shard_size_mb is None else shard_size_mb * 2**20
    shape, written = None, {}
    bar = tqdm(
        total=len(source.items),
        desc=f"shards {Path(spec).name}",
        unit="img",
        disable=not progress,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
    )
    for split, items in splits.items():
        written[split], shard, size = [], None, 0
        for item in items:
            image = item.load()
            image = _resize(image, resolution) if resolution else image
            if shape is None:
                shape = image.shape
            if image.shape != shape:
                raise DataError(
                    f"{spec}: image {item.index} has shape {list(image.shape)}, the first had {list(shape)}: "
                    "pass --resolution"
                )
            if encoding == "png" and shape[0] not in (1, 3):
                raise DataError(f"PNG holds 1 or 3 channels, the images have {shape[0]}: use --encoding npy")
            files = {encoding: encode_image(image, encoding), "cls": str(item.label).encode()}
            full = shard is not None and (shard.count >= samples_per_shard or (max_bytes and size >= max_bytes))
            if shard is None or full:
                if shard is not None:
                    written[split].append(shard.close())
                shard, size = _ShardFile(out_dir, f"{split}-{len(written[split]):06d}.tar"), 0
            shard.add(f"{item.index:08d}", files)
            size += sum(len(v) for v in files.values()) + 1024
            bar.update()
        written[split].append(shard.close())
    bar.close()
    manifest = Manifest(list(shape), source.levels, encoding, written, source=spec, seed=seed)
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(manifest.to_json())
    os.replace(tmp, out_dir / "manifest.json")
    return manifest
