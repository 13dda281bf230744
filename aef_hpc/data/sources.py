"""Sources that ``aef-hpc shards`` can convert: the embedded digits, image folders, ``.npz`` folders, ``.npy``
arrays and locally present torchvision datasets. Each yields uint8 ``[C, H, W]`` images in a fixed order.
"""

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import AEFWarning, DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
PREDEFINED_SPLITS = {"train": "train", "valid": "val", "val": "val", "test": "test"}


@dataclass
class Item:
    """One source image: a stable ``index``, the uint8 ``[C, H, W]`` pixels, a class label, and a split when the
    source defines one (``None``: assigned by the seeded random split)."""

    index: int
    load: Callable[[], np.ndarray]
    label: int = 0
    split: str | None = None
    where: str = ""
    """the file it comes from, for messages ('' : the index says it)"""


@dataclass
class Source:
    name: str
    items: list[Item]
    levels: int = 256


def _as_chw(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise DataError(f"{where}: pixels must be uint8, got {array.dtype}")
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3 and array.shape[0] in (1, 3):
        return array
    if array.ndim == 3 and array.shape[-1] in (1, 3):
        return np.ascontiguousarray(array.transpose(2, 0, 1))
    raise DataError(f"{where}: expected H×W, C×H×W or H×W×C with C in (1, 3), got shape {array.shape}")


#: modes read as they are, modes whose alpha channel is dropped (with a warning), by what they become
_EIGHT_BIT = {"L": "L", "1": "L", "RGB": "RGB", "P": "RGB", "CMYK": "RGB", "YCbCr": "RGB"}
_WITH_ALPHA = {"LA": "L", "La": "L", "RGBA": "RGB", "RGBa": "RGB", "PA": "RGB"}


def _pil_loader(path: Path, root: Path):
    """Read ``path`` as 8-bit grayscale or colour. 16- and 32-bit images (``I;16``, ``I``, ``F``) are refused
    (clipping them to 8 bits would make every pixel 255); an alpha channel is dropped with a warning."""

    def load():
        try:
            with Image.open(path) as image:
                mode = image.mode
                if mode in _WITH_ALPHA:
                    warnings.warn(
                        f"{root} holds {mode} images: their alpha channel is dropped, they are "
                        f"read as {_WITH_ALPHA[mode]} (remove the alpha channel first to silence this)",
                        AEFWarning,
                        stacklevel=2,
                    )
                elif mode not in _EIGHT_BIT:
                    raise DataError(
                        f"{path} is a {mode} image (more than 8 bits per value, or not grayscale/colour): "
                        "aef_hpc reads 8-bit grayscale or RGB images; convert the folder to 8 bits first"
                    )
                return _as_chw(np.asarray(image.convert(_EIGHT_BIT.get(mode) or _WITH_ALPHA[mode])), str(path))
        except OSError as exc:
            raise DataError(f"{path}: not a readable image ({exc})") from exc

    return load


def _split_folders(root: Path) -> dict[str, Path] | None:
    found = {PREDEFINED_SPLITS[p.name]: p for p in root.iterdir() if p.is_dir() and p.name in PREDEFINED_SPLITS}
    return found if "train" in found else None


def image_folder(root: Path, suffixes: set[str], loader) -> Source:
    """Flat folder (label 0) or class sub-folders (label = sorted folder index); ``train/valid/test`` sub-folders
    are kept as the split. Files are sorted, so the order never depends on the file system."""
    groups = _split_folders(root) or {None: root}
    items = []
    for split, folder in sorted(groups.items(), key=lambda kv: str(kv[0])):
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        files = [(0, f) for f in sorted(folder.iterdir()) if f.suffix.lower() in suffixes]
        for label, cls in enumerate(classes):
            files += [(label, f) for f in sorted((folder / cls).rglob("*")) if f.suffix.lower() in suffixes]
        items += [Item(len(items) + i, loader(f), label, split, str(f)) for i, (label, f) in enumerate(files)]
    if not items:
        raise DataError(f"{root}: no files with suffix {', '.join(sorted(suffixes))} found")
    return Source(str(root), items)


def _npz_loader(path: Path):
    def load():
        try:
            with np.load(path, allow_pickle=False) as data:
                if "image" not in data:
                    raise DataError(f"{path}: no 'image' array (keys: {list(data.keys())})")
                return _as_chw(data["image"], str(path))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable .npz ({exc})") from exc

    return load


def npy_array(path: Path) -> Source:
    """A uint8 ``.npy`` array of N images (memory-mapped; never unpickled)."""
    with open(path, "rb") as file:
        if file.read(6) != b"\x93NUMPY":
            raise DataError(f"{path} is not a NumPy .npy file (no .npy header): write it with numpy.save")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:  # object arrays, a damaged header
        raise DataError(f"{path}: not a plain array ({exc.args[0]}): save the images as a uint8 array") from None
    if array.dtype != np.uint8:
        raise DataError(f"{path}: pixels must be uint8, got {array.dtype}: convert with array.astype(numpy.uint8)")
    if array.ndim not in (3, 4):
        raise DataError(f"{path}: expected N×H×W, N×C×H×W or N×H×W×C, got shape {array.shape}")
    return Source(
        str(path), [Item(i, (lambda i=i: _as_chw(np.asarray(array[i]), f"{path}[{i}]"))) for i in range(len(array))]
    )


def digits() -> Source:
    from .digits import load_digits_images

    images, levels, labels = load_digits_images()
    array = images.numpy()
    return Source("digits", [Item(i, (lambda i=i: array[i]), int(labels[i])) for i in range(len(array))], levels=levels)


def torchvision_dataset(spec: str) -> Source:
    """``torchvision:NAME:ROOT`` with the files already under ROOT (never downloads)."""
    try:
        _, name, root = spec.split(":", 2)
    except ValueError as exc:
        raise DataError(
            f"{spec!r}: write torchvision datasets as torchvision:NAME:ROOT, e.g. torchvision:MNIST:/data"
        ) from exc
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise DataError(
            f"{spec}: torchvision is not installed; install it or convert the files as an image folder"
        ) from exc
    if not hasattr(tvd, name):
        raise DataError(f"{spec}: torchvision has no dataset {name!r}")
    items = []
    for split, train in (("train", True), ("test", False)):
        try:
            dataset = getattr(tvd, name)(root, train=train, download=False)
        except (RuntimeError, OSError) as exc:
            raise DataError(f"{spec}: the {name} files are not under {root} ({exc}); nothing is downloaded") from exc
        targets = getattr(dataset, "targets", None)
        for i in range(len(dataset)):
            label = int(targets[i]) if targets is not None else 0
            items.append(
                Item(len(items), (lambda d=dataset, i=i: _as_chw(np.asarray(d[i][0]), f"{spec}[{i}]")), label, split)
            )
    return Source(spec, items)


def open_source(spec: str) -> Source:
    """``digits`` | a folder of images | a folder of ``.npz`` | a ``.npy`` file | ``torchvision:NAME:ROOT``."""
    if spec == "digits":
        return digits()
    if spec.startswith("torchvision:"):
        return torchvision_dataset(spec)
    path = Path(spec)
    if path.is_file() and path.suffix == ".npy":
        return npy_array(path)
    if path.is_dir():
        has_npz = next(path.rglob("*.npz"), None) is not None
        return (
            image_folder(path, {".npz"}, _npz_loader)
            if has_npz
            else image_folder(path, IMAGE_SUFFIXES, lambda f: _pil_loader(f, path))
        )
    raise DataError(f"source {spec!r} is neither 'digits', a folder, a .npy file nor torchvision:NAME:ROOT")


def iterate(source: Source) -> Iterator[tuple[Item, np.ndarray]]:
    for item in source.items:
        yield item, item.load()
