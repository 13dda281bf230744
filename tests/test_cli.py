"""``aef-hpc train`` end to end on the embedded digits (tiny step counts), and its error reporting."""

import csv
import json
import subprocess

import pytest
from helpers import aef_hpc_exe
from PIL import Image

from aef_hpc.cli import main
from aef_hpc.config import load_config
from aef_hpc.data import load_embedded

FAST = [
    "run.name=digits",
    "train.steps=12",
    "train.val_every=6",
    "train.batch_size=32",
    "eval.num_samples=4",
    "eval.repeats=2",
    "eval.proposal_num_samples=4",
    "eval.proposal_images=64",
    "eval.grid_samples=16",
    "--no-progress",
]


@pytest.mark.parametrize(
    "extra",
    [
        [],
        [
            "model.name=vae",
            "model.latent_dim=4",
            "model.posterior_flow=iaf",
            "model.prior_flow=maf",
            "model.flow_hidden=16",
        ],
        ["model.name=aef-linear", "model.architecture=big", "model.latent_dim=4"],
    ],
)
def test_train_end_to_end(tmp_path, capsys, float32_default, extra):
    assert main(["train", f"run.out_dir={tmp_path}", *FAST, *extra]) == 0
    out = capsys.readouterr().out
    assert "test bits/dim:" in out
    run = tmp_path / "digits"
    best = (run / "checkpoints" / "best").read_text().strip()
    summary = json.loads((run / "eval" / f"{best}-test" / "summary.json").read_text())
    assert 0 < summary["bits_per_dim"] < 10 and summary["levels"] == 17
    assert f"{summary['bits_per_dim']:.4f}" in out
    if "model.name=aef-linear" in extra:
        assert summary["objective"] == "extended_nll" and summary["proposal_std_selected"]
        assert json.loads((run / "eval" / f"{best}-proposal.json").read_text())["proposal_std"] > 0
        assert not (run / "checkpoints" / best / "proposal.json").exists(), "a committed checkpoint is never written"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["step"] for r in rows if r["split"] == "val"] == ["6", "12"]
    n_test = len(load_embedded("digits", 0.1, 0.2, 3).test)
    assert len((run / "eval" / f"{best}-test" / "records.csv").read_text().splitlines()) == n_test + 1
    for png in run.glob("samples/*.png"):
        with Image.open(png) as image:
            assert image.width > 0
    assert {p.name.split("-step")[0] for p in run.glob("samples/*.png")} >= {"samples", "reconstructions", "curves.png"}
    saved = load_config(run / "config.yaml")
    assert saved.train.steps == 12, "the resolved config is reloadable"
    assert saved.model.image_shape == [1, 8, 8] and saved.model.bit_depth == 5, "the data's shape is recorded"
    assert not list(run.rglob("*.tmp"))


def test_default_run_names_never_collide(tmp_path, float32_default):
    args = [
        "train",
        f"run.out_dir={tmp_path}",
        "train.steps=2",
        "train.val_every=1",
        "eval.grid_samples=4",
        "model.architecture=mlp",
        "--no-progress",
    ]
    assert main(args) == 0 and main(args) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and all(n.startswith("aef-center-") for n in names), names


def test_split_is_fixed_and_disjoint():
    a, b = load_embedded("digits", 0.1, 0.2, 3), load_embedded("digits", 0.1, 0.2, 3)
    assert (a.train == b.train).all() and (a.test == b.test).all()
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert a.levels == 17 and a.image_shape == (1, 8, 8)


@pytest.mark.parametrize(
    "args,match",
    [
        (["train", "train.nosuch=1"], "train.nosuch"),
        (["train", "model.name=aef-middle"], "unknown model 'aef-middle'"),
        (["train", "model.latent_dim=64"], "latent_dim=64 is impossible"),
        (["train", "data.name=mnist"], "data.name='mnist'"),
    ],
)
def test_console_script_reports_bad_input_in_one_line(tmp_path, args, match):
    exe = aef_hpc_exe()
    proc = subprocess.run([exe, *args, f"run.out_dir={tmp_path}/runs"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aef-hpc: error:") and match in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists(), "nothing is written for a run that cannot start"


def test_running_out_of_memory_is_one_line_naming_the_limit_and_writes_nothing(tmp_path):
    """A model whose parameters alone exceed the process's memory limit (RLIMIT_DATA 1.5 GiB; big nets 8,192
    channels wide: 2.4 G parameters) stops at its first allocation past the limit with one line that names the
    limit and what to change, before its run folder is claimed."""
    import resource

    cap = int(1.5 * 2**30)
    proc = subprocess.run(
        [aef_hpc_exe(), "train", "model.name=aef-linear", "model.architecture=big", "model.width=8192",
         "model.latent_dim=16", f"run.out_dir={tmp_path}/runs", "--no-progress"],
        capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (cap, cap)),
    )  # fmt: skip
    lines = [line for line in proc.stderr.strip().splitlines() if "Warning" not in line]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("aef-hpc: error: out of memory: "), proc.stderr
    assert "can't allocate memory" in lines[0] and "RLIMIT_DATA 1.50 GiB" in lines[0], lines[0]
    assert "zero3-lean.yaml" in lines[0] and "enforce fail" not in lines[0]
    assert not (tmp_path / "runs").exists(), "nothing is written for a run that cannot start"


def test_triton_kernels_on_cpu_without_interpreter_fail_before_writing(tmp_path):
    exe = aef_hpc_exe()
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [exe, "train", "kernels=triton", f"run.out_dir={tmp_path}/runs"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2 and "TRITON_INTERPRET=1" in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("world,n_train_ranks", [(2, 2), (6, 6)])
def test_in_memory_training_batches_are_full_and_equal_on_every_rank(monkeypatch, world, n_train_ranks):
    from aef_hpc.data import Splits, TensorSource

    images = __import__("torch").arange(5 * 4, dtype=__import__("torch").uint8).reshape(5, 1, 2, 2)
    source = TensorSource(Splits(images, images[:1], images[:1], 256))
    sizes = []
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        sizes.append([len(b.images) for b in source.train_epoch(0, 4)])
    assert sizes == [[4]] * n_train_ranks


def test_aef_hpc_alone_prints_the_help_and_trains_nothing(tmp_path):
    exe = aef_hpc_exe()
    proc = subprocess.run([exe], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "usage: aef-hpc" in proc.stdout and "train" in proc.stdout
    assert not (tmp_path / "runs").exists()


def test_shards_never_overwrite_and_leave_nothing_behind(tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "train-000000.tar").write_bytes(b"precious")
    assert main(["shards", "digits", str(out), "--no-progress"]) == 2
    assert "already holds files" in capsys.readouterr().err and (out / "train-000000.tar").read_bytes() == b"precious"
    assert main(["shards", "digits", str(tmp_path / "file.txt"), "--resolution", "0", "--no-progress"]) == 2
    assert "--resolution 0" in capsys.readouterr().err
    (tmp_path / "fresh" / ".partial").mkdir(parents=True)  # as a killed run leaves it
    (tmp_path / "fresh" / ".partial" / "train-000000.tar").write_bytes(b"cut")
    assert main(["shards", "digits", str(tmp_path / "fresh"), "--samples-per-shard", "500", "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir())[0] == "manifest.json", "no staging folder left"
    (out / "notes.txt").write_text("mine")
    assert main(["shards", "digits", str(out), "--overwrite", "--samples-per-shard", "500", "--no-progress"]) == 0
    assert main(["shards", "digits", str(out), "--overwrite", "--no-progress"]) == 0
    assert (out / "manifest.json").exists() and (out / "train-000000.tar").read_bytes() != b"precious"
    assert (out / "notes.txt").read_text() == "mine", "--overwrite replaces the dataset, nothing else"
    assert not (out / "train-000002.tar").exists(), "the old dataset's extra shards are gone"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "fresh"]


def test_a_failed_shards_run_leaves_no_folder(tmp_path, capsys):
    import numpy as np

    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        __import__("PIL.Image").Image.fromarray(np.full((4, 4), i * 40, dtype=np.uint8)).save(images / f"{i}.png")
    (images / "9.png").write_bytes(b"not a png")
    assert main(["shards", str(images), str(tmp_path / "out" / "deeper"), "--no-progress"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"], "no output, no staging, no created parents"
    assert main(["shards", "digits", str(tmp_path / "x"), "--val-fraction", "nan", "--no-progress"]) == 2


def test_output_folders_that_are_files(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    assert main(["shards", "digits", str(tmp_path / "taken"), "--no-progress"]) == 2
    assert "taken is a file, not a folder" in capsys.readouterr().err
    assert main(["train", f"run.out_dir={tmp_path / 'taken'}", "--no-progress"]) == 2
    assert "taken" in capsys.readouterr().err and (tmp_path / "taken").read_text() == "a file"


@pytest.fixture
def read_only_folder(tmp_path):
    """A real read-only file system (a tmpfs mounted ro); skipped where this process may not mount one."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True
    ).returncode:
        pytest.skip("mounting a read-only tmpfs needs root (CI runs as root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_output_on_a_read_only_file_system(read_only_folder, capsys):
    assert main(["train", f"run.out_dir={read_only_folder / 'runs'}", "--no-progress"]) == 2
    assert "Read-only file system" in capsys.readouterr().err
    assert main(["shards", "digits", str(read_only_folder / "ds"), "--no-progress"]) == 2
    assert "Read-only file system" in capsys.readouterr().err


def test_more_bad_inputs_are_one_line(tmp_path, capsys):
    import json

    import numpy as np

    np.save(tmp_path / "empty.npy", np.zeros((0, 1, 4, 4), dtype=np.uint8))
    assert main(["shards", str(tmp_path / "empty.npy"), str(tmp_path / "e"), "--no-progress"]) == 2
    assert "holds no images" in capsys.readouterr().err and not (tmp_path / "e").exists()
    assert main(["shards", "digits", str(tmp_path / "d"), "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    manifest["levels"] = 0
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(manifest))
    assert main(["train", f"data.path={tmp_path / 'd'}", f"run.out_dir={tmp_path / 'runs'}", "--no-progress"]) == 2
    assert "levels must be an int of at least 2" in capsys.readouterr().err
    assert main(["train", f"run.out_dir={tmp_path / 'runs'}", "run.name=" + "n" * 300, "--no-progress"]) == 2
    assert "File name too long" in capsys.readouterr().err
    assert main(["bench", "data", "--images", "0", "--out", str(tmp_path / "b.csv")]) == 2
    assert "fewer than 3 batches" in capsys.readouterr().err
    assert main(["train", "data.path=/x/train-{000000..000001", "--no-progress"]) == 2
    assert "not a valid brace pattern" in capsys.readouterr().err
    assert main(["train", "eval.temperature=inf", "--no-progress"]) == 2
    assert "eval.temperature=inf is not a finite number" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_bad_sources_batches_and_outputs_are_one_line_before_any_work(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "garbage.npy").write_bytes(b"not an array at all")
    np.save(tmp_path / "floats.npy", np.zeros((5, 4, 4), np.float32))
    for name, match in (("objects", "not a plain array"), ("garbage", "not a NumPy .npy file"), ("floats", "uint8")):
        assert main(["shards", str(tmp_path / f"{name}.npy"), str(tmp_path / name), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and match in err and not (tmp_path / name).exists()
    runs = f"run.out_dir={tmp_path / 'runs'}"
    for batch in ("100000", "2000000000"):  # 1,258 training images: a batch would repeat them
        assert main(["train", f"train.batch_size={batch}", runs, "--no-progress"]) == 2
        assert "the training split holds 1258: every batch would repeat images" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    (tmp_path / "a-file").write_text("kept")
    for what in ("data", "train", "scale", "eval", "kernels"):  # refused before the benchmark runs
        for out in (tmp_path / "a-file" / "b.csv", tmp_path):
            assert main(["bench", what, "--out", str(out)]) == 2
            assert "--out" in capsys.readouterr().err
    assert main(["export", "runs/nope", "--out", str(tmp_path / "a-file")]) == 2
    assert "a-file is a file, not a folder" in capsys.readouterr().err
    assert main(["export", "runs/nope", "step=20"]) == 2
    assert "takes no argument step=20" in capsys.readouterr().err
    assert (tmp_path / "a-file").read_text() == "kept"
