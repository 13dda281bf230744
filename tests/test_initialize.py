"""ActNorm's data-dependent initialisation is an explicit step (``model.initialize(x)``): it works in whichever
direction data flows through each ActNorm, refuses batches without spread, and never happens as a side effect."""

import pytest
import torch

from aef_hpc import build_model
from aef_hpc.errors import DataError
from aef_hpc.flows import ActNorm, Inverse


def actnorms(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, ActNorm)}


@pytest.mark.parametrize("name", ["aef-center", "aef-linear", "vae", "iwae"])
@pytest.mark.parametrize("prior", ["maf", "iaf"])
@pytest.mark.parametrize("posterior", ["maf", "iaf"])
def test_initialize_sets_every_actnorm_in_both_roles(name, prior, posterior):
    torch.manual_seed(0)
    model = build_model(
        name,
        (1, 4, 4),
        2,
        architecture="mlp",
        hidden=8,
        prior_flow=prior,
        posterior_flow=posterior,
        flow_hidden=8,
        flow_layers=2,
    )
    x = 0.05 + 0.9 * torch.rand(64, 1, 4, 4)
    assert not any(bool(m.initialized) for m in actnorms(model).values())
    model.initialize(x)
    for where, norm in actnorms(model).items():
        assert bool(norm.initialized), where
        assert norm.log_scale.abs().sum() > 0, f"{where} moved from the identity"
    assert model.training, "initialize leaves the mode as it was"
    assert torch.isfinite(model.eval().loss(x)).all()


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_the_first_pass_comes_out_normalised_in_either_direction(direction):
    x = 3.0 + 2.0 * torch.randn(256, 5)
    norm = ActNorm(1)
    flow = norm if direction == "forward" else Inverse(norm)  # Inverse.forward runs norm.inverse
    norm.arm()
    y, _ = flow(x)
    torch.testing.assert_close(y.mean(), torch.tensor(0.0), atol=1e-9, rtol=0)
    torch.testing.assert_close(y.std(), torch.tensor(1.0), atol=1e-4, rtol=0)


def test_a_constant_batch_is_refused_and_changes_nothing():
    model = build_model("aef-center", (1, 8, 8), 2, architecture="mlp", hidden=8)
    real = 0.05 + 0.9 * torch.rand(16, 1, 8, 8)
    before = model.eval().log_prob(real)
    with pytest.raises(DataError, match=r"ActNorm preprocess.parts.1 from this batch: channel 0 has \(near\) zero"):
        model.initialize(torch.full((8, 1, 8, 8), 0.5))
    model.train()
    model.log_prob(torch.full((8, 1, 8, 8), 0.5))  # no side effect: the first log_prob initialises nothing
    torch.testing.assert_close(model.eval().log_prob(real), before)
    assert not any(bool(m.initialized) for m in actnorms(model).values())


def test_a_run_that_fails_before_its_first_checkpoint_keeps_its_logs_and_starts_over(tmp_path):
    import subprocess

    from helpers import aef_hpc_exe

    run = tmp_path / "runs" / "r"
    args = [f"run.out_dir={tmp_path}/runs", "run.name=r", "model.architecture=mlp", "train.batch_size=8",
            "train.steps=4", "train.val_every=2", "eval.grid_samples=4", "--no-progress"]  # fmt: skip
    proc = subprocess.run(
        [aef_hpc_exe(), "train", *args, "train.skip_threshold=1e-12", "train.max_skips=2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "2 steps in a row were skipped" in lines[0], proc.stderr
    assert f"`aef-hpc train --resume {run}` starts it over" in lines[0]
    assert (run / "NO_CHECKPOINT").is_file() and "skipped_step_grad_norm" in (run / "metrics.csv").read_text()
    proc = subprocess.run(
        [aef_hpc_exe(), "train", "--resume", str(run), "train.skip_threshold=null", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and (run / "checkpoints" / "step-000004").is_dir(), proc.stderr
    assert not (run / "NO_CHECKPOINT").exists() and "skipped_step" not in (run / "metrics.csv").read_text()


def test_a_failed_initialisation_changes_no_layer():
    model = build_model("aef-center", (1, 4, 4), 1, architecture="mlp", hidden=8, prior_flow="maf", flow_hidden=8)
    with pytest.raises(DataError, match="single value per channel"):
        model.initialize(0.05 + 0.9 * torch.rand(1, 1, 4, 4))  # the pixels have spread, one latent has none
    assert not any(bool(m.initialized) for m in actnorms(model).values())
    assert all(m.log_scale.abs().sum() == 0 for m in actnorms(model).values())


def test_saturated_float32_decoder_outputs_re_enter():
    model = build_model("vae", (1, 2, 2), 2, architecture="mlp", hidden=8, alpha=0.05).float().eval()
    u = torch.tensor([-40.0, -9.0, 9.0, 40.0], dtype=torch.float32).reshape(1, 1, 2, 2)  # saturates in float32
    x = (torch.sigmoid(u) - 0.05) / 0.9
    assert torch.isfinite(model.loss(x)).all()
