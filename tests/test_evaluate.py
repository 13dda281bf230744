"""``aef-hpc eval`` and ``aef-hpc sample`` on finished runs: exact reproduction of the training run's test number,
importance sampling independent of the chunk size, standard errors, FID and denoising, and bad input."""

import csv
import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import aef_hpc_exe

from aef_hpc.cli import main
from aef_hpc.engine import open_checkpoint
from aef_hpc.engine.single import load_model_weights
from aef_hpc.errors import AEFWarning, CheckpointError
from aef_hpc.evaluate import restore
from aef_hpc.evaluate.inception import FIDInceptionV3
from aef_hpc.evaluate.restore import weights_digest

TINY = [
    "train.steps=4",
    "train.val_every=2",
    "train.batch_size=32",
    "model.architecture=mlp",
    "eval.grid_samples=4",
    "--no-progress",
]
IS = [
    "eval.num_samples=6",
    "eval.repeats=2",
    "eval.chunk_size=4",
    "eval.proposal_num_samples=4",
    "eval.proposal_images=32",
    "eval.proposal_stds=[1.0,0.1]",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    torch.set_default_dtype(torch.float32)
    try:
        for name, extra in {
            "center": ["model.name=aef-center"],
            "linear": ["model.name=aef-linear", *IS],
            "vae": ["model.name=vae", "model.latent_dim=3", "data.noise_std=0.25", *IS],
        }.items():
            assert main(["train", f"run.out_dir={out}", f"run.name={name}", *TINY, *extra]) == 0
    finally:
        torch.set_default_dtype(torch.float64)
    return out


def summary_of(run: Path, split="test", tag="") -> dict:
    """The summary of the best checkpoint's evaluation: the run's own (final test), or the one tagged ``tag`` (a
    glob pattern: the folder of other settings)."""
    best = (run / "checkpoints" / "best").read_text().strip()
    (path,) = (run / "eval").glob(f"{best}-{split}{'-' + tag if tag else ''}/summary.json")
    return json.loads(path.read_text())


def records_of(run: Path, split="test", tag="") -> list[dict]:
    best = (run / "checkpoints" / "best").read_text().strip()
    (path,) = (run / "eval").glob(f"{best}-{split}{'-' + tag if tag else ''}/records.csv")
    return list(csv.DictReader(open(path)))


@pytest.mark.parametrize("name", ["center", "linear", "vae"])
def test_eval_reproduces_the_training_runs_test_number(tmp_path, runs, name, capsys, float32_default):
    run = tmp_path / name
    shutil.copytree(runs / name, run)
    trained_summary, trained_records = summary_of(run), records_of(run)
    shutil.rmtree(run / "eval")
    assert main(["eval", str(run)]) == 0
    assert records_of(run) == trained_records
    again = summary_of(run)
    for key in ("nll_nats", "bits_per_dim", "bits_per_dim_se", "count", "proposal_std", "ess_min"):
        assert again.get(key) == trained_summary.get(key), key
    assert f"{again['bits_per_dim']:.4f}" in capsys.readouterr().out


def test_importance_sampling_is_independent_of_the_chunk_size(tmp_path, runs, float32_default):
    run = tmp_path / "vae"
    shutil.copytree(runs / "vae", run)
    nll = {}
    for chunk in ("null", 1, 4, 6):  # null: chosen for the device (CPU, 40 images: all 6 draws at once)
        assert main(["eval", str(run), f"eval.chunk_size={chunk}", "eval.limit=40"]) == 0
        nll[chunk] = [r["nll_nats"] for r in records_of(run, tag="first40")]
    assert nll["null"] == nll[1] == nll[4] == nll[6]
    assert len(list((run / "eval").glob("*-test-first40*"))) == 1, "chunks change no number: one folder"
    summary = summary_of(run)
    assert summary["estimator"] == "importance sampling" and summary["num_samples"] == 6
    assert 1 <= summary["ess_min"] <= summary["ess_median"] <= 6
    assert all(1 <= float(r["ess"]) <= 6 for r in records_of(run))


def test_standard_error_shrinks_as_the_test_set_grows(tmp_path, runs, float32_default):
    run = tmp_path / "center"
    shutil.copytree(runs / "center", run)
    se = {}
    for limit in (20, 80, 320):
        assert main(["eval", str(run), f"eval.limit={limit}"]) == 0
        summary = summary_of(run, tag=f"first{limit}")
        assert summary["count"] == limit and summary["settings"]["limit"] == limit
        se[limit] = summary["bits_per_dim_se"]
    assert se[20] > se[80] > se[320] > 0


def test_proposal_std_is_stored_beside_the_checkpoint_and_reused(tmp_path, runs, float32_default):
    run = tmp_path / "linear"
    shutil.copytree(runs / "linear", run)
    best = (run / "checkpoints" / "best").read_text().strip()
    path = run / "eval" / f"{best}-proposal.json"
    stored = json.loads(path.read_text())
    assert stored["proposal_std"] in (1.0, 0.1) and set(stored["scores"]) == {"1.0", "0.1"}
    assert summary_of(run)["proposal_std"] == stored["proposal_std"]
    assert not (run / "checkpoints" / best / "proposal.json").exists(), "the committed checkpoint stays as written"
    open_checkpoint(run / "checkpoints" / best)  # still intact: its meta.json lists every file it holds
    assert main(["eval", str(run), "eval.proposal_stds=[0.5]"]) == 0, "another grid selects again"
    assert json.loads(path.read_text())["proposal_std"] == 0.5
    assert summary_of(run, tag="eval-*")["proposal_std"] == 0.5
    assert summary_of(run)["proposal_std"] == stored["proposal_std"], "the run's own result stays"


def test_an_export_carries_the_selected_proposal_std_and_reproduces_the_runs_number(
    tmp_path, runs, float32_default, capsys
):
    run = tmp_path / "linear"
    shutil.copytree(runs / "linear", run)
    ours = summary_of(run)
    assert ours["proposal_std_selected"]
    other = 1.0 if ours["proposal_std"] == 0.1 else 0.1  # the config's proposal_std (1.0) must not come back
    assert main(["export", str(run)]) == 0
    assert " stage 2/2 " in capsys.readouterr().err  # progress (its last line)
    exported = next((run / "export").glob("step-*"))
    assert open_checkpoint(exported).meta["proposal"]["proposal_std"] == ours["proposal_std"]
    modes = {p.name: p.stat().st_mode & 0o777 for p in exported.iterdir()}
    assert modes["model.safetensors"] == modes["config.yaml"], modes  # safetensors alone would write 0o600
    for extra in (["eval.select_proposal_std=false"], []):  # the export's own config searches no more either
        shutil.rmtree(run / "export" / "eval", ignore_errors=True)
        assert main(["eval", str(exported), *extra]) == 0
        theirs = json.loads(next((run / "export" / "eval").glob("*-test/summary.json")).read_text())
        assert theirs["proposal_std"] == ours["proposal_std"] != other and not theirs["proposal_std_selected"]
        assert theirs["bits_per_dim"] == pytest.approx(ours["bits_per_dim"], rel=1e-9, abs=0)
        assert not (run / "export" / "eval" / f"{exported.name}-proposal.json").exists(), "no new search"


def test_interrupted_evaluation_records_are_reused_only_for_the_same_weights_device_and_kernels(tmp_path, runs):
    """A checkpoint folder made again with other weights (same path, same step) is another evaluation."""
    import types

    from aef_hpc.evaluate import evaluation

    trained = restore(runs / "center")
    settings = evaluation._settings(trained)
    state = {k: v.clone() for k, v in trained.model.state_dict().items()}
    same = weights_digest({k: v.clone() for k, v in state.items()})
    next(iter(state.values())).view(-1)[0] += 1  # the same folder made again with other weights
    assert weights_digest(state) != same == weights_digest(trained.model.state_dict())
    remade = types.SimpleNamespace(**{**vars(trained), "weights": weights_digest(state)})
    assert evaluation._settings(remade)["weights"] != settings["weights"]
    on_meta = types.SimpleNamespace(**{**vars(trained), "device": torch.device("meta")})
    assert evaluation._settings(on_meta) != settings
    # the folder of an evaluation: records in progress or finished are reused only by the same settings
    checkpoint = types.SimpleNamespace(path=tmp_path / "checkpoints" / "step-000006", run_dir=tmp_path)
    fake = types.SimpleNamespace(**{**vars(trained), "checkpoint": checkpoint, "tag": ""})
    out, counts = evaluation._folder(fake, settings), {"test-000000": 2}
    assert out == tmp_path / "eval" / "step-000006-test"
    assert evaluation._finished_shards(out, counts, settings) == set()
    rows = [("a", 1.0, None), ("b", 2.0, None)]
    evaluation._write_csv(out / evaluation.RECORDS / "test-000000.csv", ["key", "nll_nats", "ess"], rows)
    assert evaluation._folder(fake, settings) == out
    assert evaluation._finished_shards(out, counts, settings) == {"test-000000"}, "same settings: reused"
    for other in (evaluation._settings(remade), evaluation._settings(on_meta)):
        assert evaluation._folder(fake, other).name == "step-000006-test-2", "another folder: nothing replaced"
    (out / "settings.json").unlink()
    (out / "summary.json").write_text(json.dumps({"settings": settings}))  # finished
    assert evaluation._folder(fake, settings) == out
    assert evaluation._folder(fake, evaluation._settings(remade)).name == "step-000006-test-2"


def test_denoising_metrics(runs):
    summary = summary_of(runs / "vae")
    assert summary["denoise_noise_std"] == 0.25
    assert 0 < summary["reconstruction_mse_clean"] and 0 < summary["denoise_mse"] < 1


def test_fid_with_a_local_inception_file(tmp_path, runs, float32_default):
    """Random Inception weights (the real file cannot be downloaded here): the FID path runs end to end."""
    weights = tmp_path / "inception.pth"
    torch.manual_seed(0)
    state = FIDInceptionV3().state_dict()
    torch.save({**state, "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}, weights)
    run = tmp_path / "vae"
    shutil.copytree(runs / "vae", run)
    assert main(["eval", str(run), f"eval.fid_weights={weights}", "eval.fid_samples=3", "eval.limit=6"]) == 0
    summary = summary_of(run, tag="first6-eval-*")
    assert summary["fid"] >= 0 and summary["fid_samples"] == 3 and summary["ife"] >= 0


def test_sample_writes_grids_and_latent_plots(tmp_path, runs, capsys, float32_default):
    run = tmp_path / "center"
    shutil.copytree(runs / "center", run)
    before = {p.name: p.read_bytes() for p in (run / "samples").glob("*.png")}  # written by the training
    assert main(["sample", str(run), "n=9", "temperature=0.85", "deviations=true", "seed=1"]) == 0
    assert "sample figure 4/4 " in capsys.readouterr().err  # progress (its last line)
    names = {p.name for p in (run / "samples").glob("*.png")}
    best = (run / "checkpoints" / "best").read_text().strip()
    assert {
        f"samples-{best}-n9-T0.85-seed1-deviations.png",
        f"reconstructions-{best}-seed1.png",
        f"latent-scatter-{best}-seed1.png",
        f"latent-grid-{best}.png",
        "curves.png",
    } <= names
    assert main(["sample", str(run)]) == 0  # the defaults (n=64, seed 0) are not what the training drew (n=4)
    assert {name: (run / "samples" / name).read_bytes() for name in before} == before, "nothing replaced"
    assert "wrote" in capsys.readouterr().out


def test_weights_of_another_model_or_shape_are_refused(tmp_path):
    from aef_hpc import build_model

    model = build_model("aef-center", (1, 8, 8), 2, architecture="mlp", hidden=8)
    path = tmp_path / "model.pt"
    torch.save(build_model("aef-linear", (1, 8, 8), 2, architecture="mlp", hidden=8).state_dict(), path)
    with pytest.raises(CheckpointError, match="weights of another model"):
        load_model_weights(model, path)
    torch.save(build_model("aef-center", (1, 8, 8), 2, architecture="mlp", hidden=16).state_dict(), path)
    with pytest.raises(CheckpointError, match="has shape"):
        load_model_weights(model, path)


@pytest.mark.parametrize(
    "args,match",
    [
        (["eval", "{run}", "eval.nosuch=1"], "eval.nosuch"),
        (["eval", "{run}", "eval.num_samples=many"], "eval.num_samples"),
        (["eval", "{run}", "data.path={tmp}/nope"], "nope"),
        (["eval", "{run}", "model.latent_dim=4"], "model.latent_dim=4 differs from the checkpoint's 2"),
        (["eval", "{run}", "eval.fid_weights={tmp}/inception.pth"], "eval.fid_weights"),
        (["eval", "{tmp}/not-a-checkpoint.pt"], "is a file, not an aef_hpc run folder"),
        (["eval", "{tmp}/fake"], "is not an aef_hpc checkpoint"),
        (["eval", "{tmp}/nothing-here"], "does not exist"),
        (["eval", "{tmp}"], "holds no complete aef_hpc checkpoint"),
        (["sample", "{run}", "n=0"], "n=0 must be 1 to 1,000,000"),
        (["sample", "{run}", "deviations=maybe"], "deviations='maybe' is not true or false"),
        (["sample", "{run}", "temperature=hot"], "temperature='hot' is not a float"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, runs, args, match):
    (tmp_path / "not-a-checkpoint.pt").write_bytes(b"\x80\x04junk")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "meta.json").write_text('{"hello": 1}')
    run = runs / "center"
    before = sorted((str(p), p.stat().st_mtime_ns) for p in run.rglob("*"))
    args = [a.format(run=run, tmp=tmp_path) for a in args]
    proc = subprocess.run([aef_hpc_exe(), *args], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and match in lines[0], proc.stderr
    assert sorted((str(p), p.stat().st_mtime_ns) for p in run.rglob("*")) == before, "nothing written"


@pytest.mark.parametrize("verb", ["train", "eval", "sample", "shards", "bench"])
def test_every_verb_has_help(verb):
    proc = subprocess.run([aef_hpc_exe(), verb, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage: aef-hpc" in proc.stdout and len(proc.stdout) > 200


def test_eval_reproduces_the_final_test_after_a_resume_with_eval_overrides(tmp_path, runs, float32_default):
    run = tmp_path / "vae"
    shutil.copytree(runs / "vae", run)
    before = summary_of(run)
    assert main(["train", "--resume", str(run), "eval.num_samples=3", "--no-progress"]) == 0
    assert summary_of(run) == before, "the first final test is never replaced"
    trained_records = records_of(run, tag="2")  # the final test of other settings: beside it
    assert summary_of(run, tag="2")["num_samples"] == 3
    assert main(["eval", str(run)]) == 0
    assert records_of(run, tag="2") == trained_records


def test_eval_on_other_data(tmp_path, runs, float32_default):
    """Other pixel levels are refused; other data of the same kind never overwrites the run's own records."""
    import numpy as np

    from aef_hpc.data import load_digits_images, write_shards

    digits = load_digits_images()[0].numpy()
    np.save(tmp_path / "wide.npy", (digits.astype(np.int64) * 15).astype(np.uint8))  # 8-bit data: 256 levels
    write_shards(str(tmp_path / "wide.npy"), tmp_path / "wide", progress=False)
    run = tmp_path / "center"
    shutil.copytree(runs / "center", run)
    proc = subprocess.run(
        [aef_hpc_exe(), "eval", str(run), f"data.path={tmp_path / 'wide'}"], capture_output=True, text=True
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "256 pixel levels" in lines[0] and "17" in lines[0]
    own = records_of(run)
    assert main(["eval", str(run), "data.seed=4"]) == 0, "another split of the digits: the same kind of data"
    assert records_of(run) == own
    assert len(list((run / "eval").glob("*-test-data-*/records.csv"))) == 1


def test_eval_of_a_checkpoint_folder_kept_elsewhere_writes_beside_it(tmp_path, runs, float32_default):
    best = (runs / "center" / "checkpoints" / "best").read_text().strip()
    shutil.copytree(runs / "center" / "checkpoints" / best, tmp_path / "kept" / best)
    assert main(["eval", str(tmp_path / "kept" / best)]) == 0
    assert (tmp_path / "kept" / "eval" / f"{best}-test" / "summary.json").is_file()


def test_eval_with_other_settings_never_replaces_the_final_test(tmp_path, runs, capsys, float32_default):
    run = tmp_path / "vae"
    shutil.copytree(runs / "vae", run)
    own = summary_of(run)
    assert main(["eval", str(run), "eval.num_samples=3"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"-test-K3x{own['repeats']}")  # the records folder printed
    assert main(["eval", str(run), "eval.num_samples=3", "eval.seed=2"]) == 0
    assert summary_of(run) == own and own["num_samples"] == 6
    other = summary_of(run, tag=f"K3x{own['repeats']}")
    assert other["num_samples"] == 3 and other["settings"]["num_samples"] == 3 and other["seed"] == 0
    assert summary_of(run, tag=f"K3x{own['repeats']}-seed2")["seed"] == 2


def test_a_bf16_evaluation_is_opt_in_and_has_its_own_folder(tmp_path, runs, capsys, float32_default):
    """``eval.precision=bf16`` (autocast) writes ``<ckpt>-test-bf16`` with its setting recorded; the run's own float32
    final test stays as it was, and the two agree to bf16's precision (well under 0.05 bits/dim here)."""
    run = tmp_path / "vae"
    shutil.copytree(runs / "vae", run)
    own = summary_of(run)
    with warnings.catch_warnings():  # a CPU without bf16 instructions says it is slow: not this test's point
        warnings.simplefilter("ignore", AEFWarning)
        assert main(["eval", str(run), "eval.precision=bf16"]) == 0
    assert capsys.readouterr().out.strip().endswith("-test-bf16")
    assert summary_of(run) == own and "precision" not in own["settings"]  # fp32: as records before the key
    bf16 = summary_of(run, tag="bf16")
    assert bf16["settings"]["precision"] == "bf16" and bf16["count"] == own["count"]
    assert bf16["bits_per_dim"] != own["bits_per_dim"]
    assert bf16["bits_per_dim"] == pytest.approx(own["bits_per_dim"], abs=0.05)


def test_a_low_effective_sample_size_is_one_warning_with_what_to_do(tmp_path, runs, float32_default):
    run = tmp_path / "linear"
    shutil.copytree(runs / "linear", run)
    with pytest.warns(AEFWarning, match=r"low importance-sampling effective sample size: median .* of K=512.*"
                      r"use more samples \(eval.num_samples\)") as caught:  # fmt: skip
        assert main(["eval", str(run), "eval.num_samples=512", "eval.repeats=1", "eval.limit=10"]) == 0
    summary = summary_of(run, tag="K512x1-first10")
    assert summary["ess_median"] < 0.1 * 512 and len([w for w in caught if w.category is AEFWarning]) == 1


def test_evaluation_in_a_log_file_shows_progress_lines(tmp_path, runs):
    run = tmp_path / "center"
    shutil.copytree(runs / "center", run)
    done = subprocess.run(
        [aef_hpc_exe(), "eval", str(run), "train.progress_every=1e-9", "eval.batch_size=100"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("eval test image")]
    assert [line.split()[3] for line in lines] == ["100/359", "200/359", "300/359", "359/359"], done.stderr
    assert "images/s eta 0:00:00" in lines[-1] and "\r" not in done.stderr


def test_figures_say_what_they_show(tmp_path):
    """Row labels on the reconstruction strip, classes in colour with a legend on the latent scatter."""
    from PIL import Image

    from aef_hpc.evaluate.grids import save_grid
    from aef_hpc.evaluate.plots import latent_scatter

    rows = [torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)]
    plain = Image.open(save_grid(rows, tmp_path / "plain.png"))
    named = Image.open(save_grid(rows, tmp_path / "named.png", labels=["original", "reconstruction"]))
    margin = named.width - plain.width
    assert margin > 50 and named.height == plain.height
    assert np.asarray(named.crop((0, 0, margin, named.height))).min() < 128, "text in the margin"
    z, labels = torch.randn(300, 2), torch.arange(300) % 10
    one = Image.open(latent_scatter(z, tmp_path / "one.png")).convert("RGB")
    classes = Image.open(latent_scatter(z, tmp_path / "classes.png", labels)).convert("RGB")
    pixels = np.asarray(classes).reshape(-1, 3).astype(int)
    coloured = pixels[pixels.max(1) - pixels.min(1) > 60] // 32
    assert classes.width > one.width and len({tuple(p) for p in coloured}) >= 8
