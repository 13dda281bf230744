"""Writing and streaming real tar shards: round trips, manifests, safety, corrupt data and bad input."""

import hashlib
import json
import os
import pickle
import subprocess
import warnings

import numpy as np
import pytest
import torch
from helpers import aef_hpc_exe
from PIL import Image
from shard_helpers import digits_shards, read_members, write_tar

from aef_hpc.cli import main
from aef_hpc.data import ShardSource, TensorSource, load_digits_images, load_embedded, write_shards
from aef_hpc.data.codec import encode_image
from aef_hpc.data.digits import split as split_digits
from aef_hpc.errors import DataError


def eval_all(source, split, batch_size=64):
    keys, images = [], []
    for k, x in source.eval_batches(split, batch_size):
        keys += k
        images.append(x)
    return keys, torch.cat(images)


@pytest.mark.parametrize("encoding", ["png", "npy"])
def test_digits_round_trip_is_bit_identical(tmp_path, encoding):
    manifest = digits_shards(tmp_path, encoding)
    digits, levels, _ = load_digits_images()
    assert manifest.levels == levels == 17 and manifest.image_shape == [1, 8, 8]
    assert sum(manifest.count(s) for s in ("train", "val", "test")) == 1797
    source = ShardSource(str(tmp_path))
    for split in ("train", "val", "test"):
        keys, images = eval_all(source, split)
        assert len(keys) == len(set(keys)) == manifest.count(split)
        assert images.dtype == torch.uint8
        assert torch.equal(images, digits[[int(k) for k in keys]])


def test_digit_shards_hold_the_embedded_split(tmp_path):
    digits_shards(tmp_path)
    embedded = load_embedded("digits", 0.1, 0.2, 3)
    _, test_images = eval_all(ShardSource(str(tmp_path)), "test")
    assert sorted(map(bytes, test_images.numpy())) == sorted(map(bytes, embedded.test.numpy()))


def test_manifest_checksums_and_no_temporary_files(tmp_path):
    manifest = digits_shards(tmp_path, samples_per_shard=500)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["bit_depth"] == 5 and raw["dtype"] == "uint8" and raw["counts"]["train"] == manifest.count("train")
    for shards in manifest.splits.values():
        for shard in shards:
            data = (tmp_path / shard.name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard.sha256 and len(data) == shard.bytes
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(DataError, match="already holds a dataset"):
        digits_shards(tmp_path)


def test_shard_size_limit(tmp_path):
    manifest = write_shards("digits", tmp_path, shard_size_mb=0.1, samples_per_shard=10**6, progress=False)
    assert len(manifest.splits["train"]) > 1
    assert all(s.bytes < 0.2 * 2**20 for s in manifest.splits["train"])


def test_image_folder_with_classes_resized(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / "src" / cls / f"{i}.png")
    manifest = write_shards(
        str(tmp_path / "src"), tmp_path / "out", resolution=8, val_fraction=0.2, test_fraction=0.2, progress=False
    )
    assert manifest.image_shape == [3, 8, 8] and manifest.levels == 256
    assert sum(manifest.count(s) for s in ("train", "val", "test")) == 10
    members = read_members(tmp_path / "out" / manifest.splits["train"][0].name)
    labels = {v for k, v in members.items() if k.endswith(".cls")}
    assert labels <= {b"0", b"1"}


def test_flat_folder_needs_resolution_for_mixed_sizes(tmp_path):
    (tmp_path / "src").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "src" / "a.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "src" / "b.png")
    with pytest.raises(DataError, match="pass --resolution"):
        write_shards(str(tmp_path / "src"), tmp_path / "out", val_fraction=0.3, test_fraction=0.3, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_npz_folder_keeps_its_own_split(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("valid", 2), ("test", 3)):
        (tmp_path / "celeba" / split).mkdir(parents=True)
        for i in range(n):
            np.savez(
                tmp_path / "celeba" / split / f"{i:03d}.npz", image=rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            )
    manifest = write_shards(str(tmp_path / "celeba"), tmp_path / "out", encoding="npy", progress=False)
    assert (manifest.count("train"), manifest.count("val"), manifest.count("test")) == (4, 2, 3)
    assert manifest.image_shape == [3, 4, 4]


def test_npy_array_source(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (20, 6, 6), dtype=np.uint8)
    np.save(tmp_path / "a.npy", array)
    write_shards(str(tmp_path / "a.npy"), tmp_path / "out", progress=False)
    keys, images = eval_all(ShardSource(str(tmp_path / "out")), "train")
    assert torch.equal(images[:, 0], torch.from_numpy(array[[int(k) for k in keys]]))


def test_torchvision_source_fails_clearly_without_the_package_or_files(tmp_path):
    with pytest.raises(DataError, match="torchvision"):
        write_shards(f"torchvision:MNIST:{tmp_path}", tmp_path / "out", progress=False)


class _WritesAFile:
    """A pickle payload that creates a file when unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_members_are_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_WritesAFile(str(marker)))
    image = encode_image(np.zeros((1, 2, 2), np.uint8), "png")
    evil_npy = tmp_path / "evil.npy"
    np.save(evil_npy, np.array([_WritesAFile(str(marker))], dtype=object), allow_pickle=True)
    (tmp_path / "ds").mkdir()
    write_tar(
        tmp_path / "ds" / "train-000000.tar",
        {
            "a.png": image,
            "a.pyd": payload,
            "a.pickle": payload,
            "b.npy": evil_npy.read_bytes(),
            "b.cls": b"0",
            "c.png": image,
            "c.cls": b"1",
        },
    )
    manifest = {
        "format": "aef_hpc-shards/1",
        "image_shape": [1, 2, 2],
        "levels": 256,
        "encoding": "png",
        "splits": {"train": [{"name": "train-000000.tar", "count": 3, "sha256": "", "bytes": 0}]},
    }
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    source = ShardSource(str(tmp_path / "ds"), on_bad_shard="skip")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        batches = [b for epoch in range(5) for b in source.train_epoch(epoch, 1)]
    assert all(b.images.shape == (1, 1, 2, 2) for b in batches)
    assert sum(b.skipped for b in batches) >= 1, "the pickled .npy is a corrupt sample"
    with pytest.raises(DataError, match="sample b"):
        list(source.eval_batches("train", 2))
    assert not marker.exists(), "nothing may be unpickled"


@pytest.fixture
def damaged(tmp_path):
    """Digit shards where train-000001.tar is truncated and one sample of train-000002.tar has non-image bytes."""
    manifest = digits_shards(tmp_path)
    first = tmp_path / "train-000001.tar"
    first.write_bytes(first.read_bytes()[: 70 * 1024 + 100])
    second = tmp_path / "train-000002.tar"
    members = read_members(second)
    bad_key = sorted(k for k in members if k.endswith(".png"))[3]
    members[bad_key] = b"this is not a png"
    write_tar(second, members)
    return tmp_path, manifest, bad_key[: -len(".png")]


def test_training_skips_and_counts_corrupt_data(damaged, float32_default):
    path, manifest, _ = damaged
    source = ShardSource(str(path), num_workers=0, shuffle_buffer=50, on_bad_shard="skip")
    with pytest.warns(UserWarning, match="skipping corrupt data"):
        batches = list(source.train_epoch(0, 32))
    assert len(batches) == manifest.count("train") // 32
    assert sum(b.skipped for b in batches) >= 2
    assert all(b.images.shape == (32, 1, 8, 8) for b in batches)


def test_evaluation_refuses_a_truncated_shard(damaged):
    path, _, _ = damaged
    source = ShardSource(str(path))
    with pytest.raises(DataError, match="train-000001.tar"):
        list(source.eval_batches("train", 64))


def test_evaluation_names_shard_and_key_of_a_bad_image(damaged):
    path, _, bad_key = damaged
    (path / "train-000001.tar").unlink()
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["splits"]["train"] = [s for s in manifest["splits"]["train"] if s["name"] != "train-000001.tar"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=rf"train-000002.tar, sample {bad_key}"):
        list(ShardSource(str(path), num_workers=2).eval_batches("train", 64))


def test_evaluation_count_mismatch_names_the_shards(tmp_path):
    digits_shards(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["splits"]["test"][0]["count"] += 5
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"test-000000.tar: read 300 of 305 samples \(last key \d+\)"):
        list(ShardSource(str(tmp_path)).eval_batches("test", 64))
    write_tar(tmp_path / "test-000001.tar", {})  # a valid but empty tar: the shard is never seen at all
    manifest["splits"]["test"][0]["count"] -= 5
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"test-000001.tar: read 0 of 59 samples"):
        list(ShardSource(str(tmp_path)).eval_batches("test", 64))


def test_missing_manifest(tmp_path):
    with pytest.raises(DataError, match=rf"no manifest at {tmp_path}"):
        ShardSource(str(tmp_path))
    with pytest.raises(DataError, match="give data.manifest"):
        ShardSource("pipe:cat {shard}")


def test_sample_shape_differing_from_manifest(tmp_path):
    digits_shards(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["image_shape"] = [1, 16, 16]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"the manifest says \[1, 16, 16\]"):
        list(ShardSource(str(tmp_path)).eval_batches("val", 64))


def test_pipe_url_template(tmp_path):
    digits_shards(tmp_path)
    source = ShardSource(f"pipe:cat {tmp_path}/{{shard}}", manifest=str(tmp_path / "manifest.json"))
    keys, _ = eval_all(source, "val")
    assert len(keys) == 180


def test_train_mode_epochs_are_seeded(tmp_path):
    digits_shards(tmp_path)
    source = ShardSource(str(tmp_path), shuffle_buffer=100, seed=1)
    first = torch.cat([b.images for b in source.train_epoch(0, 64)])
    again = torch.cat([b.images for b in source.train_epoch(0, 64)])
    other = torch.cat([b.images for b in source.train_epoch(1, 64)])
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_train_from_shards_end_to_end(tmp_path, capsys, float32_default):
    digits_shards(tmp_path / "shards")
    args = [
        "train",
        f"data.path={tmp_path / 'shards'}",
        "data.num_workers=2",
        "train.steps=12",
        "train.val_every=6",
        "train.batch_size=32",
        "eval.grid_samples=8",
        f"run.out_dir={tmp_path / 'runs'}",
        "run.name=digits",
        "--no-progress",
    ]
    assert main(args) == 0
    assert "test bits/dim:" in capsys.readouterr().out
    records = next((tmp_path / "runs" / "digits" / "eval").glob("*/records.csv")).read_text().splitlines()
    assert len(records) == 1 + 359


def test_shape_or_bit_depth_mismatch_stops_before_training(tmp_path, capsys):
    digits_shards(tmp_path / "shards")
    for bad, match in (
        ("model.image_shape=[1,28,28]", "shape [1, 8, 8] but model.image_shape=[1, 28, 28]"),
        ("model.bit_depth=8", "17 levels (5 bits) but model.bit_depth=8"),
    ):
        assert main(["train", f"data.path={tmp_path / 'shards'}", bad, f"run.out_dir={tmp_path / 'runs'}"]) == 2
        assert match in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_shards_command(tmp_path, capsys):
    assert (
        main(
            [
                "shards",
                "digits",
                str(tmp_path / "d"),
                "--encoding",
                "npy",
                "--samples-per-shard",
                "700",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "train 1258 in 2 shards" in capsys.readouterr().out
    assert main(["shards", "nowhere", str(tmp_path / "e")]) == 2
    assert "neither 'digits'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "e")


@pytest.mark.parametrize("fmt", ["USTAR_FORMAT", "GNU_FORMAT", "PAX_FORMAT"])
def test_lean_tar_reader_agrees_with_tarfile(tmp_path, fmt):
    import io
    import tarfile

    from aef_hpc.data.tar import tar_members

    members = {
        "a.png": b"x" * 5,
        "dir/b.cls": b"7",
        ("d" * 120) + "/" + ("n" * 60) + ".npy": bytes(range(256)) * 3,
        "empty.cls": b"",
    }
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=getattr(tarfile, fmt)) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with open(path, "rb") as f:
        assert dict(tar_members(f, "t.tar", lambda n: True)) == members
    with open(path, "rb") as f:
        assert [n for n, _ in tar_members(f, "t.tar", lambda n: n.endswith(".cls"))] == ["dir/b.cls", "empty.cls"]
    raw = path.read_bytes()
    inside_long = raw.index(bytes(range(256))) + 100
    for cut in (100, 512 + 3, inside_long):  # in the first header, in a.png's data, in the long member's data
        with pytest.raises(DataError, match="t.tar is truncated"):
            list(tar_members(io.BytesIO(raw[:cut]), "t.tar", lambda n: True))
    garbage = bytearray(raw)
    garbage[10] ^= 0xFF
    with pytest.raises(DataError, match="corrupt tar header"):
        list(tar_members(io.BytesIO(bytes(garbage)), "t.tar", lambda n: True))


def test_brace_pattern_selects_shards(tmp_path):
    digits_shards(tmp_path, samples_per_shard=300)
    source = ShardSource(f"{tmp_path}/train-{{000001..000002}}.tar")
    assert source.count("train") == 600, "the pattern names these training shards"
    assert source.count("val") == 180 and source.count("test") == 359, "val and test: all of theirs, beside them"
    assert len(eval_all(source, "test")[0]) == 359
    keys, _ = eval_all(source, "train")
    assert len(set(keys)) == 600
    assert len(list(source.train_epoch(0, 100))) == 6
    with pytest.raises(DataError, match="none of the shards"):
        ShardSource(f"{tmp_path}/nothing-{{1..2}}.tar")
    source = ShardSource(f"pipe:cat {tmp_path}/val-{{000000..000000}}.tar", manifest=str(tmp_path / "manifest.json"))
    assert len(eval_all(source, "val")[0]) == 180
    assert len(eval_all(source, "test")[0]) == 359, "test shards through the same pipe: command"
    with pytest.raises(DataError, match="give data.manifest"):
        ShardSource("pipe:cat /x/val-{000000..000001}.tar")


def test_source_with_train_and_test_only_gets_a_validation_split(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 3)):
        (tmp_path / "src" / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(tmp_path / "src" / split / f"{i}.png")
    manifest = write_shards(str(tmp_path / "src"), tmp_path / "out", val_fraction=0.2, progress=False)
    assert (manifest.count("train"), manifest.count("val"), manifest.count("test")) == (8, 2, 3)


def test_a_missing_split_stops_training_before_it_starts(tmp_path, capsys):
    digits_shards(tmp_path / "shards")
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    del manifest["splits"]["val"]
    (tmp_path / "shards" / "manifest.json").write_text(json.dumps(manifest))
    assert main(["train", f"data.path={tmp_path / 'shards'}", f"run.out_dir={tmp_path / 'runs'}"]) == 2
    assert "no 'val' split" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def _tiny_dataset(path, shards, split="test"):
    """Shards of 1×2×2 NPY images: ``{name: (members, manifest count)}``; checksums left empty."""
    path.mkdir(parents=True, exist_ok=True)
    for name, (members, _) in shards.items():
        write_tar(path / name, dict(members))
    manifest = {
        "format": "aef_hpc-shards/1",
        "image_shape": [1, 2, 2],
        "levels": 256,
        "encoding": "npy",
        "splits": {split: [{"name": n, "count": c, "sha256": "", "bytes": 0} for n, (_, c) in shards.items()]},
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


TINY = encode_image(np.zeros((1, 2, 2), np.uint8), "npy")


def test_evaluation_names_the_shard_of_a_duplicate_member(tmp_path):
    import io
    import tarfile

    (tmp_path / "d").mkdir()
    with tarfile.open(tmp_path / "d" / "test-000000.tar", "w") as tar:
        for name, data in (("0.npy", TINY), ("0.cls", b"1"), ("0.cls", b"2")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _tiny_dataset(tmp_path / "d", {}, "test")
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    manifest["splits"]["test"] = [{"name": "test-000000.tar", "count": 1, "sha256": "", "bytes": 0}]
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"shard .*test-000000.tar"):
        list(ShardSource(str(tmp_path / "d")).eval_batches("test", 4))


def test_failing_pipe_command(tmp_path):
    good = _tiny_dataset(
        tmp_path / "d",
        {
            "train-000000.tar": ([("0.npy", TINY), ("0.cls", b"1")], 1),
            "train-000001.tar": ([("1.npy", TINY), ("1.cls", b"1")], 1),
        },
        "train",
    )
    template = f"pipe:cat {good}/gone-{{shard}}"
    with pytest.raises(DataError, match=r"shard pipe:cat .*gone-train-00000\d.tar"):
        list(ShardSource(template, manifest=str(good / "manifest.json")).eval_batches("train", 4))
    with pytest.raises(DataError, match="no readable sample in any training shard"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        list(ShardSource(template, manifest=str(good / "manifest.json"), on_bad_shard="skip").train_epoch(0, 1))


def test_training_counts_a_short_single_shard_and_no_false_alarms(tmp_path):
    members = [(f"{i}.{ext}", TINY if ext == "npy" else b"0") for i in range(3) for ext in ("npy", "cls")]
    short = _tiny_dataset(tmp_path / "short", {"train-000000.tar": (members, 5)}, "train")
    with pytest.warns(UserWarning, match="read 3 of 5 samples"):
        batches = list(ShardSource(str(short), shuffle_buffer=2, on_bad_shard="skip").train_epoch(0, 1))
    assert len(batches) == 5 and sum(b.skipped for b in batches) >= 2
    whole = _tiny_dataset(
        tmp_path / "whole", {"train-000000.tar": (members, 3), "train-000001.tar": (members, 3)}, "train"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batches = [b for e in range(3) for b in ShardSource(str(whole), shuffle_buffer=2).train_epoch(e, 1)]
    assert sum(b.skipped for b in batches) == 0


def test_evaluation_detects_a_modified_pixel(tmp_path):
    digits_shards(tmp_path, encoding="npy")
    members = read_members(tmp_path / "test-000000.tar")
    key = sorted(k for k in members if k.endswith(".npy"))[0]
    data = bytearray(members[key])
    data[-1] ^= 1
    members[key] = bytes(data)
    write_tar(tmp_path / "test-000000.tar", members)
    with pytest.raises(DataError, match="test-000000.tar: its sha256 or size differs"):
        list(ShardSource(str(tmp_path)).eval_batches("test", 64))


def test_training_stream_stops_at_corrupt_data_by_default(damaged, float32_default):
    path, _, _ = damaged
    with pytest.raises(DataError, match=r"train-00000[12].tar.*data.on_bad_shard=skip"):
        list(ShardSource(str(path), num_workers=2, shuffle_buffer=50).train_epoch(0, 32))


def test_a_corrupt_training_shard_stops_the_run_before_training(tmp_path, float32_default):
    """One flipped byte: the run stops before anything is written, naming the shard; with
    data.on_bad_shard=skip it trains without that shard and metrics.csv counts its samples."""
    import csv

    digits_shards(tmp_path / "shards")
    shard = tmp_path / "shards" / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[5000] ^= 0xFF
    shard.write_bytes(bytes(data))
    args = [
        "train",
        f"data.path={tmp_path / 'shards'}",
        f"run.out_dir={tmp_path / 'runs'}",
        "run.name=r",
        "train.steps=2",
        "train.val_every=2",
        "train.log_every=1",
        "train.batch_size=16",
        "model.architecture=mlp",
        "eval.grid_samples=4",
        "--no-progress",
    ]
    assert main(args) == 2
    assert not (tmp_path / "runs").exists(), "nothing written"
    with pytest.warns(UserWarning, match="skipping training shard .*train-000001.tar"):
        assert main([*args, "data.on_bad_shard=skip"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "runs" / "r" / "metrics.csv")))
    skipped = [int(float(r["value"])) for r in rows if r["metric"] == "skipped_samples"]
    assert skipped and skipped[-1] == 300, "the dropped shard's 300 samples are counted"


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_bad_validation_or_test_shard_stops_the_run_before_training(tmp_path, split, capsys):
    digits_shards(tmp_path / "shards")
    shard = tmp_path / "shards" / f"{split}-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-1024])
    args = ["train", f"data.path={tmp_path / 'shards'}", f"run.out_dir={tmp_path / 'runs'}", "data.on_bad_shard=skip"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{split} shard" in err and f"{split}-000000.tar" in err and "truncated" in err
    assert not (tmp_path / "runs").exists()


def test_remote_training_shards_are_checksummed_as_they_stream(tmp_path):
    """pipe: shards cannot be verified up front: a shard whose sha256 differs stops training when it has been
    read (data.on_bad_shard=skip: a warning, counted)."""
    digits_shards(tmp_path, samples_per_shard=300)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["splits"]["train"][0]["sha256"] = "0" * 64  # as if the shard had been modified
    (tmp_path / "tampered.json").write_text(json.dumps(manifest))
    template = f"pipe:cat {tmp_path}/{{shard}}"
    source = ShardSource(template, manifest=str(tmp_path / "tampered.json"), shuffle_buffer=10)
    assert source.verify() == 0, "nothing to check up front for pipe: shards"
    with pytest.raises(DataError, match=r"train-000000.tar: its sha256 or size differs"):
        list(source.train_epoch(0, 10))
    source = ShardSource(template, manifest=str(tmp_path / "tampered.json"), shuffle_buffer=10, on_bad_shard="skip")
    with pytest.warns(UserWarning, match="sha256 or size differs"):
        batches = list(source.train_epoch(0, 10))
    assert sum(b.skipped for b in batches) >= 1


@pytest.mark.parametrize("workers", [2])
def test_a_resumed_epoch_continues_the_uninterrupted_one_from_any_batch(tmp_path, workers):
    """Every start in range(2W) (odd ones too): worker w plays the part of worker (w + start) % W of the whole epoch
    after skipping that worker's batches before the start, so the batches are the whole epoch's from ``start`` on."""
    digits_shards(tmp_path, samples_per_shard=200)
    source = ShardSource(str(tmp_path), num_workers=workers, shuffle_buffer=50, seed=4)
    whole = [b.ids.tolist() for b in source.train_epoch(3, 32)]
    assert len(whole) > 2 * workers
    for start in range(2 * workers):
        resumed = [b.ids.tolist() for b in source.train_epoch(3, 32, start)]
        assert resumed == whole[start:], f"resumed at batch {start} of {len(whole)}"


def _class_folder(root, classes=10, per_class=20, mode="L"):
    rng = np.random.default_rng(0)
    for cls in range(classes):
        (root / f"class{cls}").mkdir(parents=True)
        for i in range(per_class):
            shape = (8, 8) if mode == "L" else (8, 8, len(mode))
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / f"class{cls}" / f"{i}.png")
    return root


def _classes(path):
    return {v for k, v in read_members(path).items() if k.endswith(".cls")}


def test_every_shard_of_a_class_folder_holds_every_class(tmp_path):
    src = _class_folder(tmp_path / "src")
    manifest = write_shards(str(src), tmp_path / "out", samples_per_shard=40, progress=False)
    assert manifest.shuffled and len(manifest.splits["train"]) >= 3
    for shard in manifest.splits["train"][:-1]:  # the last one may be short
        assert len(_classes(tmp_path / "out" / shard.name)) == 10, shard.name
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["shuffled"] is True
    # the same images as in the source's order, in another order; --no-shuffle keeps the order (class after class)
    kept = write_shards(str(src), tmp_path / "kept", samples_per_shard=40, shuffle=False, progress=False)
    assert not kept.shuffled and len(_classes(tmp_path / "kept" / kept.splits["train"][0].name)) <= 3
    for split in manifest.splits:
        keys, images = eval_all(ShardSource(str(tmp_path / "out")), split)
        kept_keys, kept_images = eval_all(ShardSource(str(tmp_path / "kept")), split)
        assert keys != kept_keys and sorted(keys) == kept_keys
        assert torch.equal(images[np.argsort(keys)], kept_images)


def test_sixteen_bit_images_are_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    for i in range(10):
        Image.fromarray(np.full((4, 4), 1000 * i, np.uint16)).save(tmp_path / "src" / f"{i}.png")
    assert Image.open(tmp_path / "src" / "0.png").mode.startswith("I;16")
    assert main(["shards", str(tmp_path / "src"), str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "I;16" in err and "convert the folder to 8 bits" in err
    assert not (tmp_path / "out").exists()


def test_alpha_is_dropped_with_one_plain_warning_line(tmp_path):
    src = _class_folder(tmp_path / "src", classes=2, per_class=5, mode="RGBA")
    done = subprocess.run(
        [aef_hpc_exe(), "shards", str(src), str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if line]
    assert (
        len(warning) == 1 and warning[0].startswith("aef-hpc: warning: ") and "alpha channel is dropped" in warning[0]
    )
    keys, images = eval_all(ShardSource(str(tmp_path / "out")), "train")
    assert images.shape[1] == 3
    key = int(keys[0])
    rgba = np.asarray(Image.open(src / f"class{key // 5}" / f"{key % 5}.png"))
    assert np.array_equal(images[0].numpy().transpose(1, 2, 0), rgba[..., :3])


def test_a_folder_mixing_grayscale_and_colour_is_one_line(tmp_path):
    src = _class_folder(tmp_path / "src", classes=1, per_class=3)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "class0" / "colour.png")
    with pytest.raises(DataError, match="colour.png has 3 channel.*mixes grayscale and colour"):
        write_shards(str(src), tmp_path / "out", val_fraction=0.25, test_fraction=0.25, progress=False)


def test_class_labels_of_test_images_for_the_latent_scatter(tmp_path):
    """The labels the latent scatter is coloured by: the shards' .cls members and the embedded digits' targets."""
    digits_shards(tmp_path / "d")
    _, _, targets = load_digits_images()
    source = ShardSource(str(tmp_path / "d"))
    keys, _ = eval_all(source, "test")
    assert source.labels_of("test", keys[:50]) == [int(targets[int(k)]) for k in keys[:50]]
    images, levels, _ = load_digits_images()
    positions = split_digits(images, levels, 0.1, 0.2, 3, torch.arange(len(images)))
    assert torch.equal(images[positions.labels["test"]], positions.test), "labels follow their images"
    memory = TensorSource(split_digits(images, levels, 0.1, 0.2, 3, targets))
    keys = next(memory.eval_batches("test", 500))[0]
    assert memory.labels_of("test", keys) == targets[positions.labels["test"][: len(keys)]].tolist()
    flat = tmp_path / "flat"  # one class only: nothing to colour by
    flat.mkdir()
    for i in range(10):
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(flat / f"{i}.png")
    write_shards(str(flat), tmp_path / "f", val_fraction=0.2, test_fraction=0.3, progress=False)
    keys, _ = eval_all(ShardSource(str(tmp_path / "f")), "test")
    assert ShardSource(str(tmp_path / "f")).labels_of("test", keys) is None
