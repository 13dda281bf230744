"""Data (floor 3): the embedded digits, tar shards (writing and streaming), dequantization.

Training and evaluation see one interface, implemented by ``TensorSource`` (in memory) and ``ShardSource``
(webdataset shards): ``image_shape``, ``levels``, ``count(split)``, ``train_epoch(epoch, batch_size, start)`` yielding
``Batch(images, skipped)`` and ``eval_batches(split, batch_size)`` yielding ``(keys, uint8 images)``.
"""

from .dequantize import dequantize
from .digits import Splits, load_digits_images, load_embedded, split
from .manifest import Manifest
from .memory import TensorSource
from .stream import Batch, ShardSource
from .writer import write_shards


def open_data(
    name: str,
    path: str | None,
    manifest: str | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    num_workers: int = 0,
    shuffle_buffer: int = 1000,
    on_bad_shard: str = "error",
):
    """``ShardSource`` for ``path`` (a shard folder or URL template), else the embedded dataset ``name``."""
    if path:
        return ShardSource(path, manifest, num_workers, shuffle_buffer, seed, on_bad_shard)
    return TensorSource(load_embedded(name, val_fraction, test_fraction, seed), seed)


__all__ = [
    "Batch",
    "Manifest",
    "ShardSource",
    "Splits",
    "TensorSource",
    "dequantize",
    "load_digits_images",
    "load_embedded",
    "open_data",
    "split",
    "write_shards",
]
