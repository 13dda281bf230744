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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from .codec import encode_image
from .manifest import SPLITS, Manifest, ShardInfo
from .sources import Item, Source, open_source


def assign_splits(
    source: Source, val_fraction: float, test_fraction: float, seed: int, shuffle: bool = True
) -> dict[str, list]:
    """Keep a source's own split (carving a validation split from train if it has none); otherwise a seeded
    random permutation (as ``digits.split``). Then each split in a seeded random order (``shuffle``), so every
    shard, every ``eval.limit`` prefix and every brace subset is a random sample (a class-folder source lists its
    classes one after the other); ``shuffle=False`` keeps the source's order."""
    if all(item.split is not None for item in source.items):
        groups = {s: [i for i in source.items if i.split == s] for s in SPLITS}
        if not groups["val"] and len(groups["train"]) > 1:  # e.g. torchvision's train/test: carve val from train
            order = torch.randperm(len(groups["train"]), generator=torch.Generator().manual_seed(seed)).tolist()
            n_val = max(1, round(len(order) * val_fraction))
            picked = set(order[:n_val])
            groups["val"] = [item for k, item in enumerate(groups["train"]) if k in picked]
            groups["train"] = [item for k, item in enumerate(groups["train"]) if k not in picked]
    else:
        n = len(source.items)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        n_val, n_test = round(n * val_fraction), round(n * test_fraction)
        if min(n_val, n_test, n - n_val - n_test) < 1 and n >= 3:
            raise DataError(
                f"splitting {n} images into val={val_fraction}, test={test_fraction} leaves an empty split: "
                "change --val-fraction/--test-fraction or add images"
            )
        parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
        groups = {s: [source.items[i] for i in sorted(idx)] for s, idx in parts.items()}
    if shuffle:  # one stream per split, independent of the split's size and of the others
        groups = {s: [items[i] for i in np.random.default_rng([seed, SPLITS.index(s)]).permutation(len(items))]
                  for s, items in groups.items()}  # fmt: skip
    return {s: v for s, v in groups.items() if v}


def _mismatch(spec: str, item: Item, got: tuple, first: tuple) -> str:
    what = item.where or f"{spec}: image {item.index}"
    if got[0] != first[0]:
        return (
            f"{what} has {got[0]} channel(s), the first image had {first[0]}: the source mixes grayscale and colour "
            "images; convert them all to one mode (e.g. RGB) first"
        )
    return f"{what} has shape {list(got)}, the first had {list(first)}: pass --resolution"


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


@dataclass(frozen=True)
class ShardLayout:
    """How ``aef-hpc shards`` lays a source out: image format and size, shard size, split and order."""

    encoding: str = "png"
    resolution: int | None = None
    samples_per_shard: int = 1000
    shard_size_mb: float | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 3
    shuffle: bool = True

    def check(self) -> None:
        if self.encoding not in ("png", "npy"):
            raise DataError(f"encoding {self.encoding!r} is unknown: use png or npy")
        if self.samples_per_shard < 1 or (self.shard_size_mb is not None and not 0 < self.shard_size_mb < math.inf):
            raise DataError("samples per shard and shard size must be positive")
        if self.resolution is not None and self.resolution < 1:
            raise DataError(f"--resolution {self.resolution} must be a positive number of pixels")
        if not 0 <= self.seed < 2**63:
            raise DataError(f"--seed {self.seed} must be in [0, 2**63)")
        val, test = self.val_fraction, self.test_fraction
        if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
            raise DataError(f"--val-fraction {val} and --test-fraction {test} must be in [0, 1) and sum to less than 1")


def write_shards(spec: str, out_dir: str | Path, progress: bool = True, overwrite: bool = False, **layout) -> Manifest:
    """Write ``out_dir/{split}-NNNNNN.tar`` and ``out_dir/manifest.json``; return the manifest. ``layout``: the
    fields of ``ShardLayout``.

    The shards are written into ``out_dir/.partial/`` and moved into place when all are complete, the manifest
    last: a failed or interrupted run leaves no partial shard, and no folder it created (a staging folder left
    by a kill is removed by the next run). A non-empty ``out_dir`` is refused unless ``overwrite``, which removes
    the old dataset's manifest (first) and shards, and nothing else.
    """
    layout = ShardLayout(**layout)
    layout.check()
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
        manifest = _write_all(spec, staging, layout, progress)
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


def _write_all(spec: str, out_dir: Path, layout: ShardLayout, progress: bool) -> Manifest:
    source = open_source(spec)
    if not source.items:
        raise DataError(f"{spec} holds no images")
    splits = assign_splits(source, layout.val_fraction, layout.test_fraction, layout.seed, layout.shuffle)
    max_bytes = None if layout.shard_size_mb is None else layout.shard_size_mb * 2**20
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
            image = _resize(image, layout.resolution) if layout.resolution else image
            if shape is None:
                shape = image.shape
            if image.shape != shape:
                raise DataError(_mismatch(spec, item, image.shape, shape))
            if layout.encoding == "png" and shape[0] not in (1, 3):
                raise DataError(f"PNG holds 1 or 3 channels, the images have {shape[0]}: use --encoding npy")
            files = {layout.encoding: encode_image(image, layout.encoding), "cls": str(item.label).encode()}
            full = shard is not None and (shard.count >= layout.samples_per_shard or (max_bytes and size >= max_bytes))
            if shard is None or full:
                if shard is not None:
                    written[split].append(shard.close())
                shard, size = _ShardFile(out_dir, f"{split}-{len(written[split]):06d}.tar"), 0
            shard.add(f"{item.index:08d}", files)
            size += sum(len(v) for v in files.values()) + 1024
            bar.update()
        written[split].append(shard.close())
    bar.close()
    manifest = Manifest(
        list(shape), source.levels, layout.encoding, written, source=spec, seed=layout.seed, shuffled=layout.shuffle
    )
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(manifest.to_json())
    os.replace(tmp, out_dir / "manifest.json")
    return manifest
