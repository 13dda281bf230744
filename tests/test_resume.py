"""Checkpoints and exact resume: a run SIGKILLed at some step and resumed ends bit-identical to an uninterrupted
one (embedded digits; tar shards read by 2 workers), and only complete, intact checkpoints are ever loaded."""

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import aef_hpc_exe
from shard_helpers import digits_shards

from aef_hpc.cli import main
from aef_hpc.engine import find_resumable, open_checkpoint
from aef_hpc.errors import CheckpointError
from aef_hpc.train.run_dir import read_metrics

STEPS = 24
# a small, quick run that exercises every piece of state: EMA, a cosine schedule with warmup, accumulation, a VAE
# (its loss draws from torch's global RNG), and a checkpoint every 2 steps
RUN = [
    f"train.steps={STEPS}",
    "train.val_every=8",
    "train.checkpoint_every=2",
    "train.batch_size=16",
    "train.accumulate=2",
    "train.lr_schedule=cosine",
    "train.warmup_steps=4",
    "train.ema_rate=0.9",
    "model.name=vae",
    "model.architecture=mlp",
    "model.posterior_flow=iaf",
    "model.flow_hidden=8",
    "model.flow_layers=1",
    "eval.num_samples=2",
    "eval.repeats=1",
    "eval.grid_samples=4",
    "--no-progress",
]


def final_state(run: Path) -> dict:
    folder = run / "checkpoints" / f"step-{STEPS:06d}"
    state = torch.load(folder / "model.pt", weights_only=True)
    optimizer = torch.load(folder / "optimizer.pt", weights_only=True)["optimizer"]["state"]
    ema = torch.load(folder / "train_state.pt", weights_only=True)["ema"]
    return {
        **{f"model.{k}": v for k, v in state.items()},
        **{f"ema.{k}": v for k, v in ema.items()},
        **{f"adam.{i}.{k}": v for i, s in optimizer.items() for k, v in s.items()},
    }


def kill_after_first_checkpoint(args: list[str], run: Path) -> int:
    """Start a training run, SIGKILL it as soon as a checkpoint exists; returns the newest complete step."""
    proc = subprocess.Popen([aef_hpc_exe(), "train", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list(run.glob("checkpoints/step-*/meta.json")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    step = find_resumable(run).step
    assert step < STEPS, "the run finished before it was killed: the test proved nothing"
    return step


def resume(run: Path) -> None:
    proc = subprocess.run(
        [aef_hpc_exe(), "train", "--resume", str(run), "--no-progress"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("source", ["digits", "shards"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, source):
    args = [*RUN, f"run.out_dir={tmp_path}"]
    if source == "shards":
        digits_shards(tmp_path / "shards", samples_per_shard=200)
        args += [f"data.path={tmp_path / 'shards'}", "data.num_workers=2", "data.shuffle_buffer=50"]
    proc = subprocess.run(
        [aef_hpc_exe(), "train", *args, "run.name=whole"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    killed_at = kill_after_first_checkpoint([*args, "run.name=cut"], tmp_path / "cut")
    resume(tmp_path / "cut")
    whole, cut = final_state(tmp_path / "whole"), final_state(tmp_path / "cut")
    assert whole.keys() == cut.keys()
    different = [k for k in whole if not torch.equal(whole[k], cut[k])]
    assert not different, f"killed at step {killed_at}: {different[:5]} differ"
    metrics = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert metrics == (tmp_path / "whole" / "metrics.csv").read_text().splitlines(), "the log reads as one run"


def test_resume_from_every_checkpoint_in_process_is_bit_identical(tmp_path, float32_default):
    """Resuming from any checkpoint (not just the first one a kill leaves) reaches the same final weights."""
    args = [*RUN, f"run.out_dir={tmp_path}", "run.keep_last=100"]
    assert main(["train", *args, "run.name=whole"]) == 0
    want = final_state(tmp_path / "whole")
    for step in (2, 10, 22):
        run = tmp_path / f"from-{step}"
        shutil.copytree(tmp_path / "whole", run)
        for folder in (run / "checkpoints").glob("step-*"):
            if int(folder.name[5:]) > step:
                shutil.rmtree(folder)
        assert main(["train", "--resume", str(run), "--no-progress"]) == 0
        got = final_state(run)
        assert all(torch.equal(want[k], got[k]) for k in want), f"resumed from step {step}"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    torch.set_default_dtype(torch.float32)
    try:
        assert (
            main(
                [
                    "train",
                    f"run.out_dir={out}",
                    "run.name=r",
                    "train.steps=6",
                    "train.val_every=2",
                    "train.batch_size=16",
                    "model.architecture=mlp",
                    "eval.grid_samples=4",
                    "--no-progress",
                ]
            )
            == 0
        )
    finally:
        torch.set_default_dtype(torch.float64)
    return out / "r"


def test_truncated_newest_checkpoint_is_skipped_with_a_warning(tmp_path, finished_run):
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    newest = run / "checkpoints" / "step-000006" / "model.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(UserWarning, match=r"step-000006.*model.pt is truncated or modified"):
        assert find_resumable(run).step == 4


def test_a_flipped_byte_at_equal_size_is_skipped_with_a_warning(tmp_path, finished_run):
    """Bit rot or a half-rewritten block keeps the size: the sha256 catches it."""
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    newest = run / "checkpoints" / "step-000006" / "model.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest.write_bytes(bytes(data))
    assert newest.stat().st_size == len(data)
    with pytest.warns(UserWarning, match=r"step-000006.*model.pt is truncated or modified"):
        assert find_resumable(run).step == 4


def test_a_folder_without_meta_json_is_never_loaded(tmp_path, finished_run):
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    (run / "checkpoints" / "step-000006" / "meta.json").unlink()
    assert find_resumable(run).step == 4
    for folder in (run / "checkpoints").glob("step-*"):
        (folder / "meta.json").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        find_resumable(run)
    with pytest.raises(CheckpointError, match="holds no complete aef_hpc checkpoint"):
        open_checkpoint(run)


def test_checkpoint_layout_and_retention(finished_run):
    root = finished_run / "checkpoints"
    names = sorted(p.name for p in root.iterdir())
    assert (root / "latest").read_text().strip() == "step-000006"
    best = (root / "best").read_text().strip()
    kept = {"step-000002", "step-000004", "step-000006"}  # keep_last=3 (+ best, one of them)
    assert set(n for n in names if n.startswith("step-")) == kept | {best}
    assert not [n for n in names if n.endswith(".tmp")]
    state = torch.load(root / "step-000006" / "train_state.pt", weights_only=True)
    assert {"step", "epoch", "batch_in_epoch", "ema", "best_val"} <= set(state)
    assert "torch" in torch.load(root / "step-000006" / "rng-rank-0.pt", weights_only=True)
    for name in ("config.yaml", "env.json", "metrics.csv"):
        assert (finished_run / name).is_file()
    assert list((finished_run / "tensorboard").glob("events.out.tfevents.*"))
    assert (finished_run / "samples" / "curves.png").is_file()


def test_interrupted_checkpoint_write_leaves_nothing_loadable(tmp_path, finished_run):
    """A kill during a write leaves `.step-N.tmp/`: ignored by resume, removed by the next save."""
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    partial = run / "checkpoints" / ".step-000008.tmp"
    shutil.copytree(run / "checkpoints" / "step-000006", partial)
    assert find_resumable(run).step == 6
    assert main(["train", "--resume", str(run), "train.steps=8", "--no-progress"]) == 0
    assert not partial.exists() and find_resumable(run).step == 8


@pytest.mark.parametrize(
    "args,match",
    [
        (["--resume", "{tmp}/nope"], "no such run folder"),
        (["--resume", "{tmp}/empty"], "no complete checkpoint"),
        (["--resume", "{run}", "model.latent_dim=3"], "model.latent_dim=3 differs from the checkpoint's 2"),
        (["--resume", "{run}", "model.architecture=small"], "model.architecture='small' differs"),
        (["--resume", "{run}", "--config", "configs/digits_vae.yaml"], "--config cannot be combined with --resume"),
        (["run.out_dir={runs}", "run.name=r"], "exists: continue it with `aef-hpc train --resume"),
    ],
)
def test_bad_resume_requests_are_one_line(tmp_path, finished_run, args, match):
    (tmp_path / "empty").mkdir()
    before = sorted(str(p) for p in finished_run.rglob("*"))
    args = [a.format(tmp=tmp_path, run=finished_run, runs=finished_run.parent) for a in args]
    proc = subprocess.run(
        [aef_hpc_exe(), "train", *args, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and match in lines[0], proc.stderr
    assert sorted(str(p) for p in finished_run.rglob("*")) == before, "nothing written into the run"


def test_sigterm_stops_with_one_line_and_the_run_resumes(tmp_path):
    run = tmp_path / "r"
    proc = subprocess.Popen(
        [aef_hpc_exe(), "train", *RUN, f"run.out_dir={tmp_path}", "run.name=r", "train.steps=400"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not list(run.glob("checkpoints/step-*/meta.json")):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1].strip().splitlines()
    assert proc.returncode == 130 and "interrupted at step" in err[-1] and f"--resume {run}" in err[-1], err
    assert find_resumable(run).step >= 2


def test_an_early_stopped_run_resumes_to_its_final_test_only(tmp_path, float32_default, monkeypatch):
    values = iter([5.0, 4.0, 4.5, 4.6, 4.7])
    monkeypatch.setattr("aef_hpc.train.loop.mean_loss", lambda *a, **k: next(values))
    args = ["train.steps=100", "train.val_every=2", "train.patience=6", "train.batch_size=16"]
    args += ["model.architecture=mlp", "eval.grid_samples=4", "--no-progress"]
    assert main(["train", f"run.out_dir={tmp_path}", "run.name=r", *args]) == 0
    assert find_resumable(tmp_path / "r").step == 10
    monkeypatch.setattr("aef_hpc.train.loop.mean_loss", lambda *a, **k: pytest.fail("no training after a stop"))
    assert main(["train", "--resume", str(tmp_path / "r"), "--no-progress"]) == 0
    assert find_resumable(tmp_path / "r").step == 10
    monkeypatch.setattr("aef_hpc.train.loop.mean_loss", lambda *a, **k: 1.0)
    assert main(["train", "--resume", str(tmp_path / "r"), "train.patience=20", "--no-progress"]) == 0
    assert find_resumable(tmp_path / "r").step == 32, "a larger patience trains on (best at 12, stop 20 later)"


def test_resume_repairs_a_best_pointer_a_kill_cut_off(tmp_path, finished_run):
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    best = (run / "checkpoints" / "best").read_text().strip()
    others = sorted(p.name for p in (run / "checkpoints").glob("step-*") if p.name != best)
    (run / "checkpoints" / "best").write_text(others[0] + "\n")  # as if killed before the pointer moved
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert (run / "checkpoints" / "best").read_text().strip() == best


def test_a_run_in_use_is_not_resumed_twice(tmp_path, finished_run):
    from aef_hpc.train.run_dir import lock_run

    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    with lock_run(run):
        proc = subprocess.run(
            [aef_hpc_exe(), "train", "--resume", str(run), "--no-progress"], capture_output=True, text=True, timeout=60
        )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "is being trained by another process" in lines[0]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling runs os.mkdir(marker)
        import os

        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("damage", ["junk", "text", "ints", "payload"])
def test_checkpoint_files_that_are_not_ours_are_one_line(tmp_path, finished_run, damage):
    """Even with a meta.json that matches them (rewritten), foreign files never give a traceback, and a pickle
    payload never runs (single-process and DDP checkpoints share these files and their loader)."""
    import json

    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    folder = run / "checkpoints" / "step-000006"
    target = folder / "model.pt"
    if damage == "junk":
        target.write_bytes(b"\x80\x04junk")
    elif damage == "text":
        target.write_text("hello")
    elif damage == "ints":
        torch.save({"a": 1, "b": 2}, target)
    else:
        torch.save({"a": _Payload(str(tmp_path / "payload-ran"))}, target)
    meta = json.loads((folder / "meta.json").read_text())
    import hashlib

    meta["files"]["model.pt"] = {
        "bytes": target.stat().st_size,
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    for verb in (["eval", str(folder)], ["train", "--resume", str(run), "--no-progress"]):
        proc = subprocess.run([aef_hpc_exe(), *verb], capture_output=True, text=True, timeout=60)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "model.pt" in lines[0], proc.stderr
    assert not (tmp_path / "payload-ran").exists(), "a payload ran"


def test_a_run_stopped_before_its_first_checkpoint_keeps_its_logs_and_starts_over(tmp_path, monkeypatch, capsys):
    from aef_hpc.train import loop

    args = [*RUN, "train.steps=8", "train.checkpoint_every=null", "train.log_every=1", f"run.out_dir={tmp_path}"]
    assert main(["train", *args, "run.name=whole"]) == 0
    count_step = loop._count_step

    def interrupted_at_step_3(tr, step, result):
        if step == 3:
            raise KeyboardInterrupt
        count_step(tr, step, result)

    monkeypatch.setattr(loop, "_count_step", interrupted_at_step_3)
    run = tmp_path / "r"
    assert main(["train", *args, "run.name=r"]) == 130
    assert "before the first checkpoint" in capsys.readouterr().err
    assert (run / "NO_CHECKPOINT").is_file() and not list(run.glob("checkpoints/step-*"))
    assert [r["step"] for r in read_metrics(run) if r["metric"] == "neg_elbo"] == ["1", "2"], "the logs are kept"
    assert list((run / "tensorboard").iterdir())
    monkeypatch.setattr(loop, "_count_step", count_step)
    assert main(["train", *args, "run.name=r"]) == 2
    assert f"start it over with `aef-hpc train --resume {run}`" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # starts over: the same as uninterrupted
    assert not (run / "NO_CHECKPOINT").exists()
    assert read_metrics(run) == read_metrics(tmp_path / "whole")
