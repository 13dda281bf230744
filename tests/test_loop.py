"""The training loop's parts: schedules, accumulation, EMA, skipped steps, early stopping, non-finite validation,
bf16 log-dets in float32, progress lines in a log file, and torch.compile."""

import csv
import math
import subprocess

import pytest
import torch
from helpers import aef_hpc_exe

from aef_hpc import build_model
from aef_hpc.cli import main
from aef_hpc.config import load_config
from aef_hpc.engine import SingleEngine, find_resumable
from aef_hpc.flows import ActNorm, Composite, build_flow
from aef_hpc.train.ema import EMA
from aef_hpc.train.schedule import build_scheduler, lr_factor

TINY = ["train.batch_size=16", "model.architecture=mlp", "eval.grid_samples=4", "--no-progress"]


def test_cosine_schedule_with_warmup_uses_min_lr_at_the_last_step(tmp_path, float32_default):
    cfg = load_config(
        overrides=[
            "train.steps=111",
            "train.lr_schedule=cosine",
            "train.warmup_steps=10",
            "train.lr=1e-3",
            "train.min_lr=1e-4",
        ]
    ).train
    factors = [lr_factor(k, cfg) for k in range(cfg.steps)]
    assert factors[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert factors[10] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert factors[110] == pytest.approx(0.1), "the last step uses min_lr"
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    constant = load_config(overrides=["train.warmup_steps=4"]).train
    assert [lr_factor(k, constant) for k in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = build_scheduler(optimizer, cfg)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4), "the first step: 1/10 of the warmup"
    for _ in range(60):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * factors[60])
    # the loop logs the LR each step used: the first warmup step's, and min_lr at the last step
    args = ["train.steps=6", "train.val_every=6", "train.log_every=1", "train.lr_schedule=cosine"]
    args += ["train.warmup_steps=2", "train.lr=1e-3", "train.min_lr=1e-5"]
    assert main(["train", f"run.out_dir={tmp_path}", "run.name=r", *args, *TINY]) == 0
    lrs = [float(r["value"]) for r in metrics(tmp_path / "r") if r["metric"] == "lr"]
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)


def _engine(accumulate, seed=0):
    torch.manual_seed(seed)
    model = build_model("aef-center", (1, 4, 4), 2, architecture="mlp", hidden=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return SingleEngine(model, optimizer, scheduler, grad_clip=200.0, accumulate=accumulate)


def test_gradient_accumulation_equals_one_big_batch():
    x = torch.rand(3, 16, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    one, two = _engine(1), _engine(2)
    one.unwrap().initialize(x[0]), two.unwrap().initialize(x[0])  # ActNorm from the same (whole) batch
    for batch in x:
        assert one.backward_and_step(one.loss(batch).mean()).stepped
        assert two.backward_and_step(two.loss(batch[:8]).mean()) is None, "not a boundary yet"
        assert two.backward_and_step(two.loss(batch[8:]).mean()).stepped
    for a, b in zip(one.unwrap().parameters(), two.unwrap().parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_a_non_finite_or_too_large_step_changes_nothing():
    engine = _engine(1)
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    engine.unwrap().initialize(x)
    before = [p.detach().clone() for p in engine.unwrap().parameters()]
    result = engine.backward_and_step(engine.loss(x).mean() * float("nan"))
    assert not result.stepped
    engine.skip_threshold = 1e-12
    assert not engine.backward_and_step(engine.loss(x).mean()).stepped
    assert all(torch.equal(a, b) for a, b in zip(before, engine.unwrap().parameters(), strict=True))
    assert all(p.grad is None for p in engine.unwrap().parameters()), "gradients cleared for the next step"


def test_ema_starts_at_the_first_step_and_averages():
    layer = torch.nn.Linear(2, 1)
    ema = EMA(layer, 0.5)
    assert ema.state_dict() is None
    with torch.no_grad():
        layer.weight.fill_(2.0)
    ema.update()
    with torch.no_grad():
        layer.weight.fill_(4.0)
    ema.update()
    assert torch.equal(ema.state_dict()["weight"], torch.full((1, 2), 3.0))
    with ema.applied():
        assert torch.equal(layer.weight, torch.full((1, 2), 3.0))
    assert torch.equal(layer.weight, torch.full((1, 2), 4.0))


@pytest.mark.parametrize("flow", ["actnorm", "composite", "maf", "iaf"])
def test_bf16_log_dets_accumulate_in_float32(flow):
    torch.manual_seed(0)
    module = {
        "actnorm": lambda: ActNorm(3),
        "composite": lambda: Composite(ActNorm(3), ActNorm(3)),
        "maf": lambda: build_flow("maf", 5, hidden=8, num_layers=2),
        "iaf": lambda: build_flow("iaf", 5, hidden=8, num_layers=2),
    }[flow]().to(torch.bfloat16)
    x = torch.randn(4, 3, 2, 2) if flow in ("actnorm", "composite") else torch.randn(4, 5)
    module.train()
    y, logdet = module(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and logdet.dtype == torch.float32
    _, back = module.inverse(y)
    assert back.dtype == torch.float32


@pytest.mark.parametrize("name", ["aef-center", "aef-linear", "vae"])
def test_bf16_training_runs_with_float32_objective(tmp_path, name, float32_default):
    assert (
        main(
            [
                "train",
                f"run.out_dir={tmp_path}",
                "run.name=r",
                f"model.name={name}",
                "train.precision=bf16",
                "train.steps=3",
                "train.val_every=3",
                "eval.num_samples=2",
                "eval.repeats=1",
                "eval.select_proposal_std=false",
                *TINY,
            ]
        )
        == 0
    )
    model = build_model(name, (1, 8, 8), 2, architecture="mlp", hidden=8)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.loss(torch.rand(4, 1, 8, 8)).dtype == torch.float32


def metrics(run):
    return list(csv.DictReader(open(run / "metrics.csv")))


def test_skipped_steps_are_counted_and_too_many_in_a_row_stop_with_the_checkpoint_intact(tmp_path):
    run = tmp_path / "r"
    ok = subprocess.run(
        [aef_hpc_exe(), "train", f"run.out_dir={tmp_path}", "run.name=r", "train.steps=4", "train.val_every=2", *TINY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    proc = subprocess.run(
        [
            aef_hpc_exe(),
            "train",
            "--resume",
            str(run),
            "train.steps=40",
            "train.max_skips=3",
            "train.skip_threshold=1e-12",
            "train.log_every=1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "3 steps in a row were skipped" in lines[-1] and "train.skip_threshold" in lines[-1]
    assert find_resumable(run).step == 4, "the last good checkpoint is intact and newest"
    skipped = [r for r in metrics(run) if r["metric"] == "skipped_step_grad_norm"]
    assert [r["step"] for r in skipped] == ["5", "6", "7"] and all(float(r["value"]) > 1e-12 for r in skipped)


def test_early_stopping_by_patience(tmp_path, float32_default, monkeypatch):
    values = iter([5.0, 4.0, 4.5, 4.6, 4.7, 4.8, 4.9])
    monkeypatch.setattr("aef_hpc.train.loop.mean_loss", lambda *a, **k: next(values))
    assert (
        main(
            [
                "train",
                f"run.out_dir={tmp_path}",
                "run.name=r",
                "train.steps=100",
                "train.val_every=2",
                "train.patience=6",
                *TINY,
            ]
        )
        == 0
    )
    val_steps = [int(r["step"]) for r in metrics(tmp_path / "r") if r["split"] == "val"]
    assert val_steps == [2, 4, 6, 8, 10], "stopped 6 steps after the best validation (step 4)"
    assert (tmp_path / "r" / "checkpoints" / "best").read_text().strip() == "step-000004"


def test_a_run_whose_every_validation_is_non_finite_ends_with_a_clear_error(
    tmp_path, monkeypatch, capsys, float32_default
):
    monkeypatch.setattr("aef_hpc.train.loop.mean_loss", lambda *a, **k: math.nan)
    assert main(["train", f"run.out_dir={tmp_path}", "run.name=r", "train.steps=4", "train.val_every=2", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "every validation of nll was non-finite" in err[0]


def test_progress_in_a_log_file_is_plain_lines(tmp_path):
    proc = subprocess.run(
        [
            aef_hpc_exe(),
            "train",
            f"run.out_dir={tmp_path}",
            "run.name=r",
            "train.steps=30",
            "train.val_every=30",
            "train.progress_every=1e-9",
            "train.batch_size=16",
            "model.architecture=mlp",
            "eval.grid_samples=4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train aef-center step")]
    assert len(lines) == 30 and "\r" not in proc.stderr
    assert lines[-1].startswith("train aef-center step 30/30 nll=") and "steps/s eta 0:00:00" in lines[-1]
    assert "bpd=" in lines[-1]


def test_compiled_training_step(tmp_path, float32_default):
    assert (
        main(
            [
                "train",
                f"run.out_dir={tmp_path}",
                "run.name=r",
                "train.compile=true",
                "train.steps=2",
                "train.val_every=2",
                *TINY,
            ]
        )
        == 0
    )
    assert find_resumable(tmp_path / "r").step == 2
