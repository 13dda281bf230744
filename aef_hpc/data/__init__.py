"""Data (floor 3): the embedded digits, tar shards (writing and streaming), dequantization.

Training and evaluation see one interface, implemented by ``TensorSource`` (in memory) and ``ShardSource``
(webdataset shards): ``image_shape``, ``levels``, ``count(split)``, ``train_epoch(epoch, batch_size, start)`` yielding
``Batch(images, ids, skipped)``, ``eval_batches(split, batch_size)`` yielding ``(keys, uint8 images)``, and for
evaluation by shard ``shard_counts(split)`` and ``eval_stream(split, batch_size, skip)`` yielding
``(keys, images, shard names)`` (in-memory data: pseudo-shards of 100 images).
"""

from ..config import DataConfig
from ..noise import keyed_normal, keyed_uniform, sample_id
from .dequantize import dequantize, dequantize_keyed
from .digits import Splits, load_digits_images, load_embedded, split
from .manifest import Manifest
from .memory import TensorSource
from .stream import Batch, ShardSource
from .writer import write_shards


def open_data(cfg: DataConfig):
    """``ShardSource`` for ``cfg.path`` (a shard folder, URL template or brace pattern), else the embedded
    dataset ``cfg.name``."""
    if cfg.path:
        return ShardSource(cfg.path, cfg.manifest, cfg.num_workers, cfg.shuffle_buffer, cfg.seed, cfg.on_bad_shard)
    return TensorSource(load_embedded(cfg.name, cfg.val_fraction, cfg.test_fraction, cfg.seed), cfg.seed)


__all__ = [
    "Batch",
    "Manifest",
    "ShardSource",
    "Splits",
    "TensorSource",
    "dequantize",
    "dequantize_keyed",
    "keyed_normal",
    "keyed_uniform",
    "load_digits_images",
    "load_embedded",
    "open_data",
    "sample_id",
    "split",
    "write_shards",
]
