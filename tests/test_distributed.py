"""Two real ranks on gloo, started by torchrun (launchers/local.sh), mpiexec (launchers/mpirun.sh) and DeepSpeed's
launcher: every engine trains the same losses as one process with the same global batch; ranks hold identical
parameters; ZeRO-3 partitions them; a 2-rank checkpoint resumes on 2 ranks and exports to one process."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aef_hpc.bench.scale import engine_overrides
from aef_hpc.config import load_config
from aef_hpc.data import open_data
from aef_hpc.engine.deepspeed import consolidated_state_dict, weights_only_loads
from aef_hpc.errors import CheckpointError
from aef_hpc.evaluate import restore
from aef_hpc.evaluate.likelihood import mean_loss
from aef_hpc.flows.actnorm import ActNorm
from aef_hpc.models.from_config import model_from_config
from aef_hpc.train.loop import training_batches, training_inputs
from aef_hpc.train.run_dir import read_metrics
from helpers import aef_hpc_exe

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
#: 20 steps of aef-center, 16 images per rank: the global batch of one process with 32
#: data.val_fraction=0.05: the 89 validation images are one pseudo-shard, all rank 0's (3 batches of 32), none
#: rank 1's: ZeRO-3, whose forward gathers parameters from every rank, must validate in lockstep or hang
COMMON = ["model.name=aef-center", "train.steps=20", "train.val_every=10", "train.log_every=1", "eval.limit=64",
          "eval.grid_samples=4", "eval.batch_size=32", "data.val_fraction=0.05", "train.device=cpu",
          "--no-progress"]  # fmt: skip
ENGINES = {name: engine_overrides(name) for name in ("ddp", "zero0", "zero1", "zero2", "zero3")}


def launch(command: list[str], **env) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "VENV": str(VENV_BIN.parent), "PATH": f"{VENV_BIN}:{os.environ['PATH']}", **env},
    )  # fmt: skip
    assert proc.returncode == 0, "\n".join(
        line for line in proc.stderr.splitlines() if "Warning" not in line and "return func" not in line
    )[-3000:]
    return proc


def train_losses(run_dir: Path) -> dict[int, float]:
    rows = read_metrics(run_dir)
    return {int(r["step"]): float(r["value"]) for r in rows if r["metric"] == "nll" and r["split"] == "train"}


def val_losses(run_dir: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["value"]) for r in read_metrics(run_dir) if r["split"] == "val"}


def assert_same_losses(run_dir: Path, reference: dict[int, float], rtol: float = 1e-4) -> None:
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, 21))
    worst = max(abs(losses[s] - reference[s]) / abs(reference[s]) for s in losses)
    print(f"{run_dir.name}: largest relative loss difference to one process {worst:.2e}")
    assert worst < rtol


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def single(runs):
    launch([aef_hpc_exe(), "train", *COMMON, "train.batch_size=32", f"run.out_dir={runs}", "run.name=single"])
    losses = train_losses(runs / "single")
    assert losses[20] < losses[1] - 20, "one process trains"
    return losses


def two_rank_run(runs: Path, engine: str) -> Path:
    """``runs/ENGINE``: 20 steps on 2 torchrun ranks (launched once per module)."""
    if not (runs / engine / "metrics.csv").exists():
        launch(["bash", "launchers/local.sh", *COMMON, *ENGINES[engine], "train.batch_size=16",
                f"run.out_dir={runs}", f"run.name={engine}"], NPROC="2")  # fmt: skip
    return runs / engine


@pytest.mark.parametrize("engine", list(ENGINES))
def test_two_torchrun_ranks_train_like_one_process(runs, single, engine):
    run = two_rank_run(runs, engine)
    assert_same_losses(run, single)
    val, one = val_losses(run), val_losses(runs / "single")
    assert sorted(val) == sorted(one) == [10, 20]  # validated on shares of 3 and 0 batches, like one process
    assert all(abs(val[s] - one[s]) < 1e-4 * abs(one[s]) for s in val), (val, one)
    assert json.loads((run / "env.json").read_text())[-1]["world_size"] == 2


def test_mpiexec_and_the_deepspeed_launcher_train_the_same_losses(runs, single):
    launch(["bash", "launchers/mpirun.sh", *COMMON, *ENGINES["zero2"], "train.batch_size=16",
            f"run.out_dir={runs}", "run.name=mpiexec"], NP="2")  # fmt: skip
    assert_same_losses(runs / "mpiexec", single)
    launch([str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", "29611", "--module", "aef_hpc.cli",
            "train", *COMMON, *ENGINES["zero1"], "train.batch_size=16", f"run.out_dir={runs}",
            "run.name=ds-launcher"])  # fmt: skip
    assert_same_losses(runs / "ds-launcher", single)


def test_bf16_under_zero2_trains(runs):
    launch(["bash", "launchers/local.sh", *COMMON, *ENGINES["zero2"], "train.precision=bf16", "train.batch_size=16",
            f"run.out_dir={runs}", "run.name=bf16"], NPROC="2")  # fmt: skip
    losses = train_losses(runs / "bf16")
    first, last = sum(losses[s] for s in range(1, 6)) / 5, sum(losses[s] for s in range(16, 21)) / 5
    print(f"bf16 ZeRO-2: mean loss of steps 1-5 {first:.2f}, of steps 16-20 {last:.2f}")
    assert all(map(math.isfinite, losses.values())) and last < first - 10


def test_a_model_built_under_zero_init_holds_the_weights_of_a_plain_build(tmp_path):
    """Every model x architecture x flow (36 cases): ZeRO-3 partitions a module's parameters when its own
    ``__init__`` returns, so an initialisation a parent applies to a child afterwards (zero-initialised last layers,
    near-zero residual blocks, scaled convolutions) would be lost and ZeRO-3 would train another model. And a
    collective initialisation that fails at a later ActNorm changes none, as in one process."""
    subprocess.run([sys.executable, "tests/dist/zero_init.py", str(tmp_path / "differ.json")], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    differ = json.loads((tmp_path / "differ.json").read_text())
    assert differ.pop("rollback"), "a failed collective initialisation changes no ActNorm under ZeRO-3 either"
    assert len(differ) == 36 and not {case: names for case, names in differ.items() if names}


@pytest.mark.parametrize("engine", ["ddp", "zero3"])
def test_every_rank_holds_the_same_parameters_after_steps(tmp_path, engine, float32_default):
    launch([str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "tests/dist/engine_ranks.py",
            engine, str(tmp_path)])  # fmt: skip
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["parameters_equal"] and result["actnorm_equal"] and result["actnorm_initialized"]
    assert result["model_freed"], "a closed engine keeps nothing alive (DeepSpeed's module globals included)"
    # equal on every rank is not enough (identity ActNorms are equal too): one process's initialisation on the
    # same global first batch (2 x 16 = 1 x 32 images)
    cfg = load_config(None, ["model.name=aef-center", "train.batch_size=32"])
    data = open_data(cfg.data)
    torch.manual_seed(0)
    model = model_from_config(cfg.model, data.image_shape)
    model.initialize(training_inputs(next(training_batches(data, 32, 0, 0))[2], data.levels, 0, 0, 0.0, "cpu"))
    want = torch.cat([p.detach().reshape(-1).float() for m in model.modules() if isinstance(m, ActNorm)
                      for p in m.parameters(False)])  # fmt: skip
    torch.testing.assert_close(torch.tensor(result["actnorm_after_init"]), want, rtol=1e-5, atol=1e-6)
    if engine == "zero3":
        print(f"ZeRO-3 share of the parameters per rank: {result['rank_shares']}, whole at once in the "
              f"initialisation: {result['init_peak_share']:.3f}")  # fmt: skip
        assert max(result["rank_shares"]) <= 0.55
        # the initialisation gathers a layer at a time, never the model: its peak is the largest layer (62 % here)
        total = sum(p.numel() for p in model.parameters())
        largest = max(sum(p.numel() for p in m.parameters(False)) for m in model.modules()) / total
        assert largest <= result["init_peak_share"] <= largest + 0.02, (largest, result["init_peak_share"])
        # one rank's file at a time gives DeepSpeed's own consolidation, bit for bit (sub-groups, padding)
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        ours = consolidated_state_dict(tmp_path / "ckpt")
        with weights_only_loads():
            theirs = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path / "ckpt"), tag="zero")
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k].float()) for k in ours)
        # sampling (gathered parameters) and validation (through the engine) under ZeRO-3 == one process
        cfg = load_config(None, ["model.name=aef-center"])
        data = open_data(cfg.data)
        model = model_from_config(cfg.model, data.image_shape)
        model.load_state_dict(consolidated_state_dict(tmp_path / "ckpt"))
        model.eval()
        samples = model.sample(6, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(samples, torch.load(tmp_path / "samples.pt"), rtol=1e-5, atol=1e-6)
        val = mean_loss(model.loss, data.eval_batches("val", 64), data.levels, 0, torch.device("cpu"))
        assert val == pytest.approx(result["val"], rel=1e-6)
    else:
        assert result["rank_shares"] == [1.0, 1.0]


def test_two_rank_zero3_resumes_on_two_and_exports_to_one(tmp_path, float32_default):
    # log every 3 steps: the checkpoint at step 10 falls inside a logged mean, which must come out the same
    args = [*COMMON, *ENGINES["zero3"], "train.batch_size=16", "train.log_every=3", f"run.out_dir={tmp_path}"]
    shown = launch(["bash", "launchers/local.sh", *args, "run.name=whole"], NPROC="2")
    assert shown.stdout.startswith("test NLL:"), "stdout holds the results only"
    assert not [line for line in shown.stderr.splitlines() if "Warning" in line or "WARNING" in line], shown.stderr
    launch(["bash", "launchers/local.sh", *args, "run.name=r", "train.steps=10"], NPROC="2")
    launch(["bash", "launchers/local.sh", "--resume", str(tmp_path / "r"), "train.steps=20", "--no-progress"],
           NPROC="2")  # fmt: skip
    uninterrupted = train_losses(tmp_path / "whole")
    assert sorted(uninterrupted) == list(range(3, 21, 3))
    assert train_losses(tmp_path / "r") == uninterrupted, "resumed == uninterrupted (2 ranks)"
    # the checkpoint of 2 ranks, consolidated, evaluated in one process: the NLL the 2-rank job reported
    out = launch([aef_hpc_exe(), "export", str(tmp_path / "r")]).stdout
    exported = Path(out.split("wrote ")[-1].strip())
    assert (exported / "model.safetensors").is_file() and (exported / "config.yaml").is_file()
    shown = launch([aef_hpc_exe(), "eval", str(exported), "eval.limit=64", "train.device=cpu"]).stdout
    ours = json.loads(next((tmp_path / "r" / "eval").glob("*-test/summary.json")).read_text())
    theirs = json.loads(next((exported.parent / "eval").glob("*-test/summary.json")).read_text())
    # float32 on other batches (2 ranks vs 1 process): equal to the per-image tolerance below, not bit for bit
    assert theirs["nll_nats"] == pytest.approx(ours["nll_nats"], rel=1e-5) and f"{theirs['nll_nats']:.3f}" in shown
    # the ZeRO-3 run evaluated on 2 ranks without an export == the export evaluated in one process, image by image
    launch([aef_hpc_exe(), "eval", str(exported), "train.device=cpu", "eval.limit=null"])
    launch([str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "aef_hpc.cli", "eval",
            str(tmp_path / "r"), "train.device=cpu", "eval.limit=null"])  # fmt: skip
    records = [next(p.glob("*-test-all/records.csv")) for p in (tmp_path / "r" / "eval", exported.parent / "eval")]
    zero3, single = ({r["key"]: float(r["nll_nats"]) for r in csv.DictReader(open(f, newline=""))} for f in records)
    assert set(zero3) == set(single) and max(abs(zero3[k] - single[k]) / abs(single[k]) for k in single) < 1e-5
    # and the validation NLL computed through the ZeRO-3 engine on 2 ranks == the exported model's
    trained = restore(exported)
    data = open_data(trained.cfg.data)
    val = mean_loss(trained.model.loss, data.eval_batches("val", 256), data.levels, 0, trained.device)
    logged = [float(r["value"]) for r in read_metrics(tmp_path / "r") if r["split"] == "val" and r["step"] == "20"]
    assert val == pytest.approx(logged[0], rel=1e-6)


def test_a_resume_on_another_process_count_or_engine_is_one_line(runs):
    proc = subprocess.run(
        [aef_hpc_exe(), "train", "--resume", str(two_rank_run(runs, "zero3")), "train.steps=30", "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    written = "written by engine=deepspeed (ZeRO stage 3) on 2 process(es)"
    assert proc.returncode == 2 and written in proc.stderr, proc.stderr
    proc = subprocess.run(
        ["bash", "launchers/local.sh", *COMMON, "engine=single", f"run.out_dir={runs}", "run.name=never"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "NPROC": "2"},
    )  # fmt: skip
    assert proc.returncode != 0 and "engine=single trains in one" in proc.stderr
    assert not (runs / "never").exists()
    # an error on rank 0 alone (its run folder exists) stops every rank with the same line, none hangs
    proc = subprocess.run(
        ["bash", "launchers/local.sh", *COMMON, *ENGINES["ddp"], f"run.out_dir={runs}", "run.name=zero3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "NPROC": "2"},
    )  # fmt: skip
    # both ranks print the line; their writes may interleave on one stderr, so count the message, not lines
    assert proc.returncode != 0 and proc.stderr.count("exists: continue it with") == 2, proc.stderr[-2000:]
    assert "distributed_c10d.py" not in proc.stderr, "no rank died inside a collective"


def test_bad_steps_are_skipped_before_any_engine_steps(tmp_path):
    """train.skip_threshold (140: skips step 4) and a NaN planted in rank 0's loss at step 5, on DDP and ZeRO 0-3
    (2 ranks x 16) against one process (1 x 32): the same steps taken and skipped, the same objectives, LR schedule
    (a cosine that moves every step, skipped steps included) and gradient norms, and the same finite weights."""
    script = "tests/dist/skip_steps.py"
    launch([str(VENV_BIN / "python"), script, str(tmp_path), "140", "5", "single"])
    engines = ["ddp", "zero0", "zero1", "zero2", "zero3"]
    launch([str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", script, str(tmp_path), "140", "5",
            *engines])  # fmt: skip
    reference = torch.load(tmp_path / "single.pt")
    taken = [s[0] for s in reference["steps"]]
    assert taken == [True, True, True, False, False, True], "the threshold no longer skips exactly step 4"
    for engine in engines:
        result = torch.load(tmp_path / f"{engine}.pt")
        assert [s[0] for s in result["steps"]] == taken, engine
        for got, want in zip(result["steps"], reference["steps"], strict=True):
            (_, loss, lr, norm), (_, want_loss, want_lr, want_norm) = got, want
            assert lr == want_lr, f"{engine}: the LR schedule must advance on skipped steps too"
            assert loss == pytest.approx(want_loss, rel=1e-5, nan_ok=True), engine
            assert norm == pytest.approx(want_norm, rel=1e-4, nan_ok=True), engine
        assert torch.isfinite(result["params"]).all(), f"{engine} applied a non-finite step"
        torch.testing.assert_close(result["params"], reference["params"], rtol=1e-5, atol=1e-6, msg=engine)


def test_no_payload_runs_when_a_crafted_deepspeed_checkpoint_is_opened(tmp_path):
    """Every file of a ZeRO 0-3 checkpoint replaced by a pickle whose unpickling runs ``os.mkdir``: resuming on 2
    ranks (DeepSpeed's own loaders) and consolidating in one process (export, eval) refuse it with one line."""
    stages = ["zero0", "zero1", "zero2", "zero3"]
    launch([str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "tests/dist/payload_ranks.py",
            str(tmp_path), *stages])  # fmt: skip
    marker = tmp_path / "payload-ran"
    for stage in stages:
        for rank in (0, 1):
            outcome = json.loads((tmp_path / stage / f"outcome-rank-{rank}.json").read_text())
            assert "not a readable DeepSpeed checkpoint" in outcome and "posix.mkdir" in outcome, (stage, outcome)
        with pytest.raises(CheckpointError, match="posix.mkdir"):
            consolidated_state_dict(tmp_path / stage)
    assert not marker.exists(), "a payload ran"


@pytest.mark.parametrize("model", ["vae", "iwae"])
def test_stochastic_objectives_train_and_validate_on_two_ranks_like_one_process(tmp_path, model):
    """Posterior draws keyed by (seed, epoch, sample) in training and (eval.seed, sample) in validation: 2 ranks x 32
    log the objectives of 1 x 64."""
    args = [*COMMON, f"model.name={model}", "train.steps=6", "train.val_every=3", "eval.num_samples=2",
            "eval.repeats=1", f"run.out_dir={tmp_path}"]  # fmt: skip
    launch([aef_hpc_exe(), "train", *args, "train.batch_size=64", "run.name=one"])
    launch(["bash", "launchers/local.sh", *args, *ENGINES["ddp"], "train.batch_size=32", "run.name=two"], NPROC="2")
    for split in ("train", "val"):
        one, two = (
            {r["step"]: float(r["value"]) for r in read_metrics(tmp_path / name) if r["split"] == split
             and r["metric"] in ("neg_elbo", "neg_iwae_bound")}
            for name in ("one", "two")
        )  # fmt: skip
        assert one and sorted(one) == sorted(two), split
        worst = max(abs(two[s] - one[s]) / abs(one[s]) for s in one)
        assert worst < 1e-4, f"{model} {split}: relative difference {worst:.2e} to one process"


@pytest.mark.parametrize("engine", ["ddp", "zero2"])
def test_gradient_accumulation_on_two_ranks_matches_one_process(tmp_path, engine):
    """train.accumulate=2: DDP's no_sync micro-batches and DeepSpeed's own accumulation give one process's steps."""
    args = [*COMMON, "train.accumulate=2", "train.steps=10", "train.val_every=5", f"run.out_dir={tmp_path}"]
    launch([aef_hpc_exe(), "train", *args, "train.batch_size=16", "run.name=one"])
    launch(["bash", "launchers/local.sh", *args, *ENGINES[engine], "train.batch_size=8", "run.name=two"], NPROC="2")
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(two) == list(range(1, 11))
    worst = max(abs(two[s] - one[s]) / abs(one[s]) for s in one)
    print(f"{engine}, accumulate=2: largest relative loss difference to one process {worst:.2e}")
    assert worst < 1e-4
