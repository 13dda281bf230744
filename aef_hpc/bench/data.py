"""``aef-hpc bench data``: images/s of the shard stream against one-PNG-per-file loading, next to training steps.

Images are the digits, upscaled (nearest) to 1×28×28 and tinted to 3×64×64, so PNG compression sees real
structure. For each shape: shards in PNG and NPY read through ``ShardSource.train_epoch`` with 0, 1, 2 workers,
a folder of PNG files read by a map-style torch ``Dataset`` + ``DataLoader`` with the same workers, and the
training step rate (images/s) of the small (1×28×28) and big (3×64×64) models on the default device.
"""

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..data import ShardSource, dequantize, load_digits_images, write_shards
from ..errors import DataError
from ..models import build_model
from ..progress import Progress
from .report import write_csv

SHAPES = {"1x28x28": (1, 28, 28), "3x64x64": (3, 64, 64)}
MODELS = {"1x28x28": dict(architecture="small", latent_dim=2), "3x64x64": dict(architecture="big", latent_dim=64)}


def bench_images(shape, n: int) -> np.ndarray:
    images, levels, _ = load_digits_images()
    x = images[torch.arange(n) % len(images)].float() * (255 / (levels - 1))
    x = F.interpolate(x, size=shape[1:], mode="nearest")
    tint = torch.tensor([1.0, 0.7, 0.4])[: shape[0]].view(1, -1, 1, 1)
    return (x * tint).round().clamp(0, 255).to(torch.uint8).numpy()


class PngFolder(Dataset):
    """The baseline: one PNG file per image, decoded with PIL in ``__getitem__``."""

    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as image:
            array = np.array(image)
        return torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy())


def _rate(iterable, count_of) -> tuple[float, float]:
    """``(steady images/s after the first batch, seconds to the first batch)``: start-up is reported apart."""
    begin = time.perf_counter()
    iterator = iter(iterable)
    next(iterator)
    start, n = time.perf_counter(), 0
    for item in iterator:
        n += count_of(item)
    if n == 0:
        raise DataError("too few images for a rate (one batch or less): raise --images to a few batches at least")
    return n / (time.perf_counter() - start), start - begin


def _row(shape, loader, workers, rate, first):
    return dict(shape=shape, loader=loader, workers=workers, images_per_s=round(rate, 1), first_batch_s=round(first, 3))


def train_step_rate(shape, batch_size: int, steps: int) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model("aef-linear", shape, **MODELS["x".join(map(str, shape))]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = dequantize(torch.randint(0, 256, (batch_size, *shape), dtype=torch.uint8), 256).to(device)

    def step():
        loss = model.loss(x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def run(
    out: str = "bench/data.csv", images: int = 4096, batch_size: int = 128, workers=(0, 1, 2), train_steps: int = 5
) -> list[dict]:
    if images < 3 * batch_size:
        raise DataError(f"--images {images} is fewer than 3 batches of {batch_size}: a rate needs a few batches")
    rows = []
    bar = Progress(len(SHAPES) * (3 * len(workers) + 1), "bench data", "case")
    with tempfile.TemporaryDirectory() as tmp, bar:
        tmp = Path(tmp)
        for name, shape in SHAPES.items():
            array = bench_images(shape, images)
            np.save(tmp / f"{name}.npy", array)
            for encoding in ("png", "npy"):
                write_shards(
                    str(tmp / f"{name}.npy"),
                    tmp / f"{name}-{encoding}",
                    encoding=encoding,
                    samples_per_shard=256,
                    val_fraction=0.01,
                    test_fraction=0.01,
                    progress=False,
                )
            folder = tmp / f"{name}-files"
            folder.mkdir()
            files = []
            for i, image in enumerate(array):
                files.append(folder / f"{i:06d}.png")
                Image.fromarray(image[0] if shape[0] == 1 else image.transpose(1, 2, 0)).save(
                    files[-1], compress_level=1
                )
            for w in workers:
                for encoding in ("png", "npy"):
                    source = ShardSource(str(tmp / f"{name}-{encoding}"), num_workers=w, shuffle_buffer=1000)
                    rate, first = _rate(source.train_epoch(0, batch_size), lambda b: len(b.images))
                    rows.append(_row(name, f"webdataset-{encoding}", w, rate, first))
                    bar.update()
                loader = DataLoader(PngFolder(files), batch_size=batch_size, shuffle=True, num_workers=w)
                rows.append(_row(name, "png-files", w, *_rate(loader, len)))
                bar.update()
            rate = train_step_rate(shape, min(batch_size, 64), train_steps)
            rows.append(_row(name, f"train-step-aef-linear-{MODELS[name]['architecture']}", 0, rate, 0.0))
            bar.update()
    write_csv(rows, out)
    return rows
