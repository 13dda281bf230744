"""The embedded default dataset: scikit-learn's handwritten digits (1,797 real 1×8×8 images, pixels 0-16).

It ships inside scikit-learn, so nothing is downloaded. The number of pixel levels (17) is read off the
data and drives dequantization and bits/dim.
"""

from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass
class Splits:
    """Integer images ``[N, C, H, W]`` (uint8) per split, with the number of levels of the pixel values and, when
    known, each split's class labels."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    levels: int
    labels: dict[str, torch.Tensor] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])


def split(
    images: torch.Tensor, levels: int, val_fraction: float, test_fraction: float, seed: int, labels=None
) -> Splits:
    """Random train/validation/test split with a fixed seed (a permutation, so no image appears twice); ``labels``
    (one per image) follow their images."""
    n = images.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if min(n_val, n_test, n - n_val - n_test) < 1:
        raise ConfigError(f"split of {n} images into val={val_fraction}, test={test_fraction} leaves an empty part")
    val, test, train = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
    parts = {"train": train, "val": val, "test": test}
    kept = None if labels is None else {name: labels[index] for name, index in parts.items()}
    return Splits(images[train], images[val], images[test], levels, kept)


def load_digits_images() -> tuple[torch.Tensor, int, torch.Tensor]:
    """All 1,797 digits as uint8 ``[N, 1, 8, 8]``, their number of levels (max value + 1 = 17) and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).to(torch.uint8).unsqueeze(1)
    return images, int(images.max()) + 1, torch.from_numpy(digits.target)


def load_embedded(name: str, val_fraction: float, test_fraction: float, seed: int) -> Splits:
    if name != "digits":
        raise ConfigError(f"data.name={name!r} is not an embedded dataset: the embedded one is 'digits'")
    images, levels, labels = load_digits_images()
    return split(images, levels, val_fraction, test_fraction, seed, labels)
