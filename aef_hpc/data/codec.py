"""Encoding and decoding of one sample: ``<key>.png`` or ``<key>.npy`` (uint8, C×H×W) plus ``<key>.cls``.

Only these declared extensions are ever read; ``.npy`` is loaded with ``allow_pickle=False`` and nothing is
unpickled, whatever a shard contains.
"""

import io

import numpy as np
from PIL import Image

from ..errors import DataError

IMAGE_KEYS = {"png": "png", "npy": "npy"}
DECLARED = (".png", ".npy", ".cls")


class CorruptSample(DataError):
    """A sample that cannot be decoded into an image of the manifest's shape."""


def encode_image(image: np.ndarray, encoding: str) -> bytes:
    """uint8 ``[C, H, W]`` (C = 1 or 3 for PNG) -> file bytes."""
    buffer = io.BytesIO()
    if encoding == "npy":
        np.save(buffer, np.ascontiguousarray(image, dtype=np.uint8), allow_pickle=False)
    elif encoding == "png":
        pixels = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
        Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format="PNG", compress_level=1)
    else:
        raise DataError(f"unknown encoding {encoding!r}: use png or npy")
    return buffer.getvalue()


def decode_image(data: bytes, ext: str) -> np.ndarray:
    """File bytes -> uint8 ``[C, H, W]``."""
    if ext == "npy":
        array = np.load(io.BytesIO(data), allow_pickle=False)
        if array.dtype != np.uint8 or array.ndim != 3:
            raise ValueError(f"expected a uint8 C×H×W array, got {array.dtype} of shape {array.shape}")
        return array
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode not in ("L", "RGB"):
            raise ValueError(f"expected an 8-bit L or RGB PNG, got mode {image.mode}")
        array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def decode_sample(sample: dict, image_shape: tuple[int, ...]) -> tuple[str, np.ndarray, int]:
    """A grouped tar sample -> ``(key, image, label)``; raises ``CorruptSample`` naming shard and key."""
    key, url = sample.get("__key__"), sample.get("__url__")
    found = [e for e in IMAGE_KEYS if e in sample]
    ext = found[0] if len(found) == 1 else None
    try:
        if len(found) > 1:
            raise ValueError("both a .png and a .npy image: which one is meant?")
        if ext is None:
            raise ValueError(
                f"no image member (.png or .npy); members: {sorted(k for k in sample if not k.startswith('__'))}"
            )
        image = decode_image(sample[ext], ext)
        if tuple(image.shape) != tuple(image_shape):
            raise ValueError(f"image of shape {list(image.shape)}, the manifest says {list(image_shape)}")
        label = int(sample["cls"].decode()) if "cls" in sample else -1
    except Exception as exc:  # PIL, numpy and int() raise many types
        raise CorruptSample(f"shard {url}, sample {key}: {exc}") from exc
    return key, image, label
