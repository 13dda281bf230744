"""In-memory data (the embedded digits) behind the same interface as ``ShardSource``."""

import hashlib
from collections.abc import Iterator

import torch

from ..process_group import world_info
from .digits import Splits
from .stream import Batch

#: images per pseudo-shard of in-memory data (the unit of evaluation records)
SHARD = 100


class TensorSource:
    """Train/val/test uint8 tensors; training batches are a permutation seeded by ``(seed, epoch)``, dealt to ranks."""

    def __init__(self, splits: Splits, seed: int = 0):
        self.splits, self.seed = splits, seed

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.splits.image_shape

    @property
    def levels(self) -> int:
        return self.splits.levels

    def _split(self, split: str) -> torch.Tensor:
        return {"train": self.splits.train, "val": self.splits.val, "test": self.splits.test}[split]

    def fingerprint(self, split: str) -> str:
        """sha256 of the split's pixels and shape: equal exactly when two runs see the same images in the same order
        (what a paired comparison of per-image records needs)."""
        images = self._split(split).contiguous()
        return hashlib.sha256(repr(tuple(images.shape)).encode() + images.numpy().tobytes()).hexdigest()

    def verify(self) -> int:
        """In memory: nothing to check (the shard interface's ``verify``)."""
        return 0

    def count(self, split: str) -> int:
        return len(self._split(split))

    def batches_per_epoch(self, batch_size: int) -> int:
        return max(1, self.count("train") // (world_info()[1] * batch_size))

    def train_epoch(self, epoch: int, batch_size: int, start: int = 0) -> Iterator[Batch]:
        """Full batches only, the same number on every rank; a rank's share is cycled if it is too small.
        ``start`` skips the epoch's first batches (a resumed run)."""
        rank, world = world_info()
        n = self.count("train")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        mine = order[rank::world] if rank < n else order[rank % n : rank % n + 1]
        needed = self.batches_per_epoch(batch_size) * batch_size
        mine = mine.repeat(-(-needed // len(mine)))[:needed]
        for chunk in mine.split(batch_size)[start:]:
            yield Batch(self.splits.train[chunk], chunk)

    def labels_of(self, split: str, keys: list[str]) -> list[int] | None:
        """The class labels of the images ``keys`` (``"<split>-<position>"``); ``None`` without labels."""
        if self.splits.labels is None:
            return None
        return [int(self.splits.labels[split][int(key.rsplit("-", 1)[1])]) for key in keys]

    def shard_counts(self, split: str) -> dict[str, int]:
        """Pseudo-shards of ``SHARD`` images (``<split>-NNNN``), the unit of evaluation records."""
        n = self.count(split)
        return {f"{split}-{i:04d}": min(SHARD, n - start) for i, start in enumerate(range(0, n, SHARD))}

    def eval_stream(
        self, split: str, batch_size: int, skip=frozenset(), whole: bool = False
    ) -> Iterator[tuple[list[str], torch.Tensor, list[str]]]:
        """``(keys, images, shard names)`` of this rank's share (``whole``: all) of the pseudo-shards not in
        ``skip``; keys ``"<split>-<position>"``."""
        rank, world = (0, 1) if whole else world_info()
        kept = [i for i, name in enumerate(self.shard_counts(split)) if name not in skip]
        n = self.count(split)
        mine = kept[rank::world]  # whole pseudo-shards to ranks, like shard files
        if not mine:
            return
        positions = torch.cat([torch.arange(i * SHARD, min((i + 1) * SHARD, n)) for i in mine])
        for chunk in positions.split(batch_size):
            yield (
                [f"{split}-{int(i):05d}" for i in chunk],
                self._split(split)[chunk],
                [f"{split}-{int(i) // SHARD:04d}" for i in chunk],
            )

    def eval_batches(
        self, split: str, batch_size: int, whole: bool = False
    ) -> Iterator[tuple[list[str], torch.Tensor]]:
        """``(keys, images)``: this rank's share of ``split`` in order (``whole``: all of it)."""
        for keys, images, _ in self.eval_stream(split, batch_size, whole=whole):
            yield keys, images
