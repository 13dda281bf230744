"""Streaming tar shards with webdataset: split by rank and worker, decode only declared keys, batch.

Training (``train_epoch``): each epoch a permutation of the shards seeded by ``(seed, epoch)`` is dealt to
ranks, then to workers; every worker cycles through its shards and shuffles samples in a buffer seeded by
``(seed, epoch, rank, worker)``. Each rank yields exactly ``floor(N_train / (world * batch))`` batches per epoch,
so no rank runs dry and hangs a collective. ``train_epoch(e, batch, start)`` reproduces epoch ``e`` from its batch
``start`` on (a resumed run): the loader's workers take batches round-robin, so worker ``w`` plays the part of
worker ``(w + start) % W`` of the uninterrupted epoch and first reads past that worker's batches before ``start``.
Nothing draws from torch's global RNG (the loader has its own seeded generator). Bad samples and truncated
shards are skipped with a warning and counted in ``Batch.skipped``.

Evaluation (``eval_batches``): shard ``i`` goes to rank ``i % world`` and, within the rank, to one worker, in
a fixed order, so every sample is read exactly once; the per-shard counts (summed over ranks) must equal the
manifest's, and any decoding problem is an error naming the shard and key.
"""

import contextlib
import hashlib
import itertools
import random
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds
from braceexpand import braceexpand
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, group_by_keys

from ..errors import AEFWarning, DataError
from ..noise import sample_id
from ..process_group import collective_device, world_info
from .codec import DECLARED, CorruptSample, decode_sample
from .manifest import Manifest
from .tar import tar_members


@dataclass
class Batch:
    """uint8 images ``[B, C, H, W]``, their int64 sample ids ``[B]`` (the key of the dequantization noise), and how
    many samples were skipped as corrupt since the previous batch."""

    images: torch.Tensor
    ids: torch.Tensor
    skipped: int = 0


def _tar_name(url: str) -> str:
    """The shard file name in a path, URL or ``pipe:`` command (its last ``*.tar``)."""
    names = re.findall(r"[^/\s]+\.tar", url)
    return names[-1] if names else url


def _is_brace_pattern(location: str) -> bool:
    return "{" in location and "{shard}" not in location


def locate_shards(location: str, manifest_path: str | None) -> tuple[Manifest, dict[str, str]]:
    """The manifest and a URL per shard name, for one of three forms of ``location``:

    - a local folder holding the shards and ``manifest.json``;
    - a URL template with ``{shard}`` (``pipe:`` commands, ``http://``, ... anything webdataset opens);
    - a brace pattern (``/data/train-{000000..000003}.tar``): only the shards it names are used.
    """
    if _is_brace_pattern(location):
        try:
            urls = list(braceexpand(location))
        except Exception as exc:  # noqa: BLE001  braceexpand's own error types
            raise DataError(f"data.path={location!r} is not a valid brace pattern ({exc})") from None
        by_name = {_tar_name(u): u for u in urls}
        if manifest_path is None:
            if re.match(r"^[A-Za-z][\w+.-]*:", urls[0]):
                raise DataError(f"data.path={location!r} names remote shards: give data.manifest as well")
            manifest_path = str(Path(urls[0]).parent / "manifest.json")
        manifest = Manifest.load(manifest_path)
        kept = {k: [s for s in v if s.name in by_name] for k, v in manifest.splits.items()}
        if not any(kept.values()):
            raise DataError(f"none of the shards {location!r} names is listed in the manifest")
        # a split the pattern names no shard of (e.g. val and test beside a train-{...} pattern) keeps all of its
        # shards, found beside the named ones
        manifest.splits = {k: kept[k] or v for k, v in manifest.splits.items()}
        first = _tar_name(urls[0])
        head, tail = urls[0][: urls[0].rindex(first)], urls[0][urls[0].rindex(first) + len(first) :]
        names = [s.name for shards in manifest.splits.values() for s in shards]
        return manifest, {n: by_name.get(n, head + n + tail) for n in names}
    if manifest_path is None:
        if "{shard}" in location:
            raise DataError(f"data.path={location!r} is a URL template: give data.manifest as well")
        manifest_path = str(Path(location) / "manifest.json")
    manifest = Manifest.load(manifest_path)
    names = [s.name for shards in manifest.splits.values() for s in shards]
    if "{shard}" in location:
        return manifest, {n: location.replace("{shard}", n) for n in names}
    return manifest, {n: str(Path(location) / n) for n in names}


def _declared(fname: str) -> bool:
    return fname.lower().endswith(DECLARED)


def _url_of(exn: Exception) -> str:
    strings = [a for a in exn.args if isinstance(a, str)]
    return strings[-1] if len(strings) > 1 else "?"


class _SkipCounter:
    """Training handler: warn, count ``n`` skipped samples, go on (``data.on_bad_shard=skip``); ``strict``: an
    error naming the shard (the default)."""

    def __init__(self, strict: bool = False):
        self.count, self.strict = 0, strict

    def __call__(self, exn: Exception, n: int = 1) -> bool:
        if self.strict:
            _raise_named(exn, n)
        self.count += n
        reason = exn.args[0] if exn.args else exn
        warnings.warn(f"skipping corrupt data ({type(exn).__name__}: {reason})", AEFWarning, stacklevel=2)
        return True


def _raise_named(exn: Exception, n: int = 1) -> bool:
    if isinstance(exn, DataError):
        raise DataError(exn.args[0]) from exn
    raise DataError(
        f"shard {_url_of(exn)} is unreadable ({type(exn).__name__}: {exn.args[0] if exn.args else exn})"
    ) from exn


class _HashingReader:
    """Reads a stream while hashing it, to check a shard's sha256 and size against the manifest."""

    def __init__(self, stream):
        self.stream, self.sha, self.size = stream, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


class ShardReader(IterableDataset):
    """The per-worker pipeline: shard list -> tar samples (declared keys only) -> decode -> [shuffle] -> batch.

    Each shard opened is checked as it ends: its sample count (and, in evaluation, its sha256 and size) against
    the manifest; a tar error or a shortfall is skipped and counted in training and an error in evaluation.
    """

    def __init__(
        self,
        urls,
        shards,
        image_shape,
        batch_size,
        train,
        seed=0,
        epoch=0,
        shuffle_buffer=1000,
        world=(0, 1),
        start=0,
        skip_bad=False,
    ):
        super().__init__()
        self.skip_bad = skip_bad
        self.urls, self.image_shape, self.batch_size, self.train = list(urls), tuple(image_shape), batch_size, train
        self.info = dict(zip(self.urls, shards, strict=True))
        self.seed, self.epoch, self.shuffle_buffer = seed, epoch, shuffle_buffer
        self.rank, self.world = world
        self.start = start

    def _train_shards(self, worker: int, workers: int):
        n = len(self.urls)
        for cycle in itertools.count():
            order = random.Random(f"{self.seed}-{self.epoch}-{cycle}").sample(range(n), n)
            mine = order[self.rank :: self.world] or [order[self.rank % n]]
            mine = mine[worker::workers] or [mine[worker % len(mine)]]
            yield from (dict(url=self.urls[i], index=i) for i in mine)

    def _eval_shards(self, worker: int, workers: int):
        mine = list(range(len(self.urls)))[self.rank :: self.world][worker::workers]
        yield from (dict(url=self.urls[i], index=i) for i in mine)

    def _members(self, shards, handler):
        """Open each shard (webdataset's ``gopen``: paths, ``pipe:``, URLs), yield its tar members and an
        end-of-shard marker, then check it: the sample count, and the sha256 and size of every shard read to its
        end (in training too, for shards that ``ShardSource.verify`` could not check up front: ``pipe:``, URLs)."""
        empty_streak = 0
        for shard in shards:
            url, info = shard["url"], self.info[shard["url"]]
            count, last, error, raw = 0, None, None, None
            try:
                raw = gopen(url)
                stream = _HashingReader(raw)
                for name, data in tar_members(stream, url, _declared):
                    prefix = base_plus_ext(name)[0]
                    if prefix != last:
                        count, last = count + 1, prefix
                    yield dict(fname=name, data=data, __url__=url, url=url)
                stream.drain()
            except Exception as exn:  # noqa: BLE001  a broken shard: skipped in training, an error in evaluation
                error = exn
            finally:  # also when the consumer stops early (the end of a training epoch)
                try:
                    if raw is not None:
                        raw.close()
                except Exception as exn:  # noqa: BLE001  e.g. a pipe: command that failed
                    error = error or exn
            yield {}  # end of shard: samples of two shards never merge
            problems = [] if error is None else [f"{type(error).__name__}: {error.args[0] if error.args else error}"]
            if count != info.count:
                problems.append(f"read {count} of {info.count} samples (last key {last})")
            if (
                not problems
                and info.sha256
                and (stream.sha.hexdigest(), stream.size)
                != (
                    info.sha256,
                    info.bytes,
                )
            ):
                problems.append("its sha256 or size differs from the manifest's: modified or corrupted")
            if problems:
                handler(DataError(f"shard {url}: {'; '.join(problems)}"), max(1, info.count - count))
            empty_streak = 0 if count else empty_streak + 1
            if self.train and empty_streak > len(self.urls):
                raise DataError(f"no readable sample in any training shard this worker reads (last tried {url})")

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        fast_forward = 0
        if self.train:  # resume at batch `start`: this worker continues the stream of worker (worker + start) % W
            worker, fast_forward = (worker + self.start) % workers, (worker + self.start) // workers
        if self.train:
            handler = _SkipCounter(strict=not self.skip_bad)
            shards = self._train_shards(worker, workers)
        else:
            handler = _raise_named
            shards = self._eval_shards(worker, workers)
        index_of = {}

        def track(stream):
            for shard in stream:
                index_of[shard["url"]] = shard["index"]
                yield dict(url=shard["url"])

        samples = group_by_keys(self._members(track(shards), handler), handler=handler)
        if self.train:
            rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{worker}")
            samples = wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng)(samples)
        images, keys, shard_ids = [], [], []
        for sample in samples:
            try:
                key, image, _ = decode_sample(sample, self.image_shape)
            except CorruptSample as exc:
                if not self.train:
                    raise
                handler(exc)
                continue
            images.append(image)
            keys.append(key)
            shard_ids.append(index_of[sample["__url__"]])
            if len(images) == self.batch_size:
                if fast_forward:  # a batch the interrupted run already trained on
                    fast_forward -= 1
                    handler.count = 0
                else:
                    yield self._collate(images, keys, shard_ids, handler)
                images, keys, shard_ids = [], [], []
        if images and not self.train:
            yield self._collate(images, keys, shard_ids, handler)

    def _collate(self, images, keys, shard_ids, handler):
        batch = torch.from_numpy(np.stack(images))
        if self.train:
            skipped, handler.count = handler.count, 0
            return batch, torch.tensor([sample_id(k) for k in keys]), skipped
        return batch, keys, torch.tensor(shard_ids)


def _local_shard_problem(url: str, shard) -> str | None:
    """What is wrong with a local shard file (missing, other size, other sha256), or ``None``; remote: ``None``."""
    if re.match(r"^[A-Za-z][\w+.-]*:", url):
        return None
    path = Path(url)
    if not path.is_file():
        return "missing"
    if path.stat().st_size != shard.bytes:
        return f"{path.stat().st_size} bytes, the manifest says {shard.bytes} (truncated or modified)"
    if shard.sha256:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != shard.sha256:
            return "its sha256 differs from the manifest's (corrupted or modified)"
    return None


def _one_line(exc: Exception) -> str:
    """A DataLoader worker's error carries its traceback; keep the final message line."""
    last = str(exc).strip().splitlines()[-1]
    return last.split(": ", 1)[1] if last.startswith("aef_hpc.") and ": " in last else last


class ShardSource:
    """A shard dataset described by ``manifest.json``; the data interface used by training and evaluation."""

    def __init__(
        self,
        location: str,
        manifest: str | None = None,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        on_bad_shard: str = "error",
    ):
        self.manifest, self.url_of = locate_shards(str(location), manifest)
        self.num_workers, self.shuffle_buffer, self.seed = num_workers, shuffle_buffer, seed
        self.on_bad_shard = on_bad_shard

    def labels_of(self, split: str, keys: list[str]) -> list[int] | None:
        """The class labels (``.cls`` members) of the images ``keys`` of ``split``, read from its shards; ``None``
        when the shards carry none or carry one class only (``aef-hpc shards`` of a flat folder: all 0)."""
        wanted, found = set(keys), {}
        for shard in self.manifest.shards(split):
            with contextlib.closing(gopen(self.url_of[shard.name])) as stream:
                for name, data in tar_members(stream, shard.name, lambda n: n.endswith(".cls")):
                    key = base_plus_ext(name)[0]
                    if key in wanted and data.strip().lstrip(b"-").isdigit():
                        found[key] = int(data)
            if len(found) == len(wanted):
                break
        if len(found) < len(wanted) or len(set(found.values())) < 2:
            return None
        return [found[key] for key in keys]

    def fingerprint(self, split: str) -> str:
        """sha256 over the split's shards' sha256 (the manifest's): equal exactly when two runs see the same images
        (what a paired comparison of per-image records needs)."""
        return hashlib.sha256("".join(s.sha256 for s in self.manifest.shards(split)).encode()).hexdigest()

    def verify(self) -> int:
        """Check every local shard's existence, size and sha256 against the manifest before any training: a bad
        validation or test shard is always an error; a bad training shard is one too, unless
        ``on_bad_shard="skip"``, which drops it with a warning. Returns the samples dropped. Remote shards
        (``pipe:``, URLs) are checked as they stream."""
        dropped, bad_train = 0, []
        for split, shards in self.manifest.splits.items():
            for shard in shards:
                problem = _local_shard_problem(self.url_of[shard.name], shard)
                if problem is None:
                    continue
                if split != "train" or self.on_bad_shard != "skip":
                    fix = "rewrite the shards" if split != "train" else "rewrite it, or set data.on_bad_shard=skip"
                    raise DataError(f"{split} shard {self.url_of[shard.name]}: {problem}: {fix}")
                warnings.warn(
                    f"skipping training shard {self.url_of[shard.name]} ({problem}): {shard.count} samples",
                    AEFWarning,
                    stacklevel=2,
                )
                bad_train.append(shard.name)
                dropped += shard.count
        if bad_train:
            kept = [s for s in self.manifest.splits["train"] if s.name not in bad_train]
            if not kept:
                raise DataError("every training shard is missing or corrupt: rewrite the shards")
            self.manifest.splits["train"] = kept
        return dropped

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest.image_shape)

    @property
    def levels(self) -> int:
        return self.manifest.levels

    def count(self, split: str) -> int:
        return self.manifest.count(split)

    def _loader(self, split, batch_size, train, epoch=0, world=(0, 1), start=0, skip=frozenset()):
        shards = [s for s in self.manifest.shards(split) if s.name not in skip]
        reader = ShardReader(
            [self.url_of[s.name] for s in shards],
            shards,
            self.image_shape,
            batch_size,
            train,
            self.seed,
            epoch,
            self.shuffle_buffer,
            world,
            start,
            self.on_bad_shard == "skip",
        )
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)  # not torch's global RNG
        return DataLoader(reader, batch_size=None, num_workers=self.num_workers, generator=generator)

    def batches_per_epoch(self, batch_size: int) -> int:
        return max(1, self.count("train") // (world_info()[1] * batch_size))

    def train_epoch(self, epoch: int, batch_size: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start, start + 1, ...`` of epoch ``epoch`` (``batches_per_epoch`` in all)."""
        world = world_info()
        loader = self._loader("train", batch_size, True, epoch, world, start)
        try:
            for images, ids, skipped in itertools.islice(loader, max(0, self.batches_per_epoch(batch_size) - start)):
                yield Batch(images, ids, int(skipped))
        except DataError as exc:
            hint = "" if self.on_bad_shard == "skip" else " (data.on_bad_shard=skip trains on without it)"
            raise DataError(f"{_one_line(exc)}{hint}") from None

    def shard_counts(self, split: str) -> dict[str, int]:
        """The shards of ``split`` and their sample counts (the manifest's), in order."""
        return {s.name: s.count for s in self.manifest.shards(split)}

    def eval_stream(
        self, split: str, batch_size: int, skip=frozenset(), whole: bool = False
    ) -> Iterator[tuple[list[str], torch.Tensor, list[str]]]:
        """``(keys, images, shard names)``: this rank's share (``whole``: all) of the shards of ``split`` not in
        ``skip``, each sample once; no collective (the caller checks the counts)."""
        world = (0, 1) if whole else world_info()
        names = [s.name for s in self.manifest.shards(split) if s.name not in skip]
        if not names:
            return
        try:
            for images, keys, shard_ids in self._loader(split, batch_size, False, world=world, skip=skip):
                yield keys, images, [names[i] for i in shard_ids.tolist()]
        except DataError as exc:
            raise DataError(_one_line(exc)) from None

    def eval_batches(
        self, split: str, batch_size: int, whole: bool = False
    ) -> Iterator[tuple[list[str], torch.Tensor]]:
        """This rank's share of ``split`` (every image once over all ranks); ``whole``: all of it, in this rank.
        At the end the per-shard counts, summed over ranks, must equal the manifest's."""
        expected = self.shard_counts(split)
        counts = torch.zeros(len(expected), dtype=torch.int64)
        index = {name: i for i, name in enumerate(expected)}
        for keys, images, shards in self.eval_stream(split, batch_size, whole=whole):
            counts += torch.bincount(torch.tensor([index[s] for s in shards]), minlength=len(expected))
            yield keys, images
        if not whole and dist.is_available() and dist.is_initialized():
            reduced = counts.to(collective_device())
            dist.all_reduce(reduced)
            counts = reduced.cpu()
        short = [f"{n} ({int(c)} of {expected[n]})" for n, c in zip(expected, counts, strict=True) if c != expected[n]]
        if short:
            raise DataError(
                f"{split} split: shards delivered other sample counts than manifest.json says: {', '.join(short)}"
            )
