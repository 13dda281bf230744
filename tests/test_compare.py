"""``aef-hpc compare``: per-run bits/dim, paired per-image differences against a baseline checked against closed
forms on constructed records, seeds aggregated, mismatched evaluations refused in one line; and on a real sweep's
records."""

import csv
import json
import math

import numpy as np
import pytest
from scipy import stats

from aef_hpc.cli import main
from aef_hpc.config import load_config, to_yaml
from aef_hpc.study import compare

N = 40


def fake_run(root, name, bits, model="vae", latent=2, levels=256, fingerprint="same", keys=None, split="test"):
    """A run folder as training leaves it, with ``bits`` as its per-image bits/dim of ``split``."""
    run = root / name
    folder = run / "eval" / f"step-000010-{split}"
    folder.mkdir(parents=True)
    cfg = load_config(None, [f"model.name={model}", f"model.latent_dim={latent}"])
    (run / "config.yaml").write_text(to_yaml(cfg))
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best").write_text("step-000010\n")
    keys = keys or [f"{i:08d}" for i in range(len(bits))]
    with open(folder / "records.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "shard", "nll_nats", "bits_per_dim", "ess"])
        writer.writerows([k, "test-000000", b * 64 * math.log(2), b, ""] for k, b in zip(keys, bits, strict=True))
    summary = {"split": split, "levels": levels, "image_shape": [1, 8, 8], "data_fingerprint": fingerprint,
               "bits_per_dim": float(np.mean(bits))}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def hard_and_easy():
    """Per-image bits/dim that vary a lot between images (some are hard), shared by every run."""
    return np.random.default_rng(0).uniform(1.0, 3.0, N)


def test_the_paired_difference_has_its_closed_form(tmp_path, hard_and_easy):
    c, delta = 0.05, 0.01
    noise = delta * np.array([1.0, -1.0] * (N // 2))  # mean 0, sample std delta * sqrt(N / (N - 1))
    base = fake_run(tmp_path, "base", hard_and_easy)
    other = fake_run(tmp_path, "other", hard_and_easy + c + noise, model="aef-linear")
    runs = [compare.load(p, "test") for p in (base, other)]
    rows = compare.compare(runs, runs[0])
    v = rows[1].versus
    assert v.n == N
    assert abs(v.mean - (rows[1].bits_per_dim - rows[0].bits_per_dim)) < 1e-9, "the difference of the means"
    assert abs(v.mean - c) < 1e-12
    assert abs(v.se - delta / math.sqrt(N - 1)) < 1e-12
    half = stats.t.ppf(0.975, N - 1) * delta / math.sqrt(N - 1)
    assert abs(v.low - (c - half)) < 1e-12 and abs(v.high - (c + half)) < 1e-12
    unpaired = math.sqrt(np.var(hard_and_easy, ddof=1) / N + np.var(hard_and_easy + noise, ddof=1) / N)
    assert abs(v.unpaired_se - unpaired) < 1e-12
    assert v.se < v.unpaired_se / 10, "correlated runs: pairing removes the per-image difficulty"
    assert rows[0].versus is None and abs(rows[0].spread - np.std(hard_and_easy, ddof=1) / math.sqrt(N)) < 1e-12


def test_seeds_are_aggregated_and_paired_through_their_per_image_means(tmp_path, hard_and_easy):
    shifts = {"vae-s0": 0.0, "vae-s1": 0.02, "aef-s0": -0.1, "aef-s1": -0.06, "aef-s2": -0.08}
    runs = [compare.load(fake_run(tmp_path, name, hard_and_easy + shift), "test") for name, shift in shifts.items()]
    rows = {(r.kind, r.name): r for r in compare.compare(runs, runs[0])}
    aef, vae = rows[("config", "aef")], rows[("config", "vae")]
    assert aef.seeds == 3 and vae.seeds == 2
    assert abs(aef.bits_per_dim - (hard_and_easy.mean() - 0.08)) < 1e-12
    assert abs(aef.spread - np.std([-0.1, -0.06, -0.08], ddof=1)) < 1e-12, "the spread over seeds"
    assert abs(aef.versus.mean - (-0.08 - 0.01)) < 1e-12 and aef.versus.se < 1e-12, "a constant shift: no error"
    assert vae.versus is None and rows[("run", "vae-s1")].versus.mean == pytest.approx(0.02, abs=1e-12)


def test_only_seeds_of_the_same_settings_are_aggregated(tmp_path, hard_and_easy):
    runs = [compare.load(fake_run(tmp_path, name, hard_and_easy, latent=latent), "test")
            for name, latent in (("a-s0", 2), ("a-s1", 2), ("b-s0", 2), ("b-s1", 8))]  # fmt: skip
    kinds = [(r.kind, r.name) for r in compare.compare(runs, runs[0])]
    assert ("config", "a") in kinds and ("config", "b") not in kinds, "b-s1 has another latent size: not a seed of b"


def test_a_sweep_folder_leaves_out_its_unfinished_runs_with_a_note(tmp_path, capsys, hard_and_easy):
    fake_run(tmp_path, "a-s0", hard_and_easy)
    fake_run(tmp_path, "a-s1", hard_and_easy + 0.1)
    (tmp_path / "a-s2").mkdir()
    (tmp_path / "a-s2" / "config.yaml").write_text((tmp_path / "a-s0" / "config.yaml").read_text())
    assert main(["compare", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "a-s2: no test evaluation yet (unfinished or failed): left out" in captured.err
    assert "2 seeds" in captured.out


def test_only_images_both_evaluated_are_paired(tmp_path, hard_and_easy):
    base = fake_run(tmp_path, "base", hard_and_easy)
    half = fake_run(tmp_path, "half", hard_and_easy[::2] + 0.1, keys=[f"{i:08d}" for i in range(0, N, 2)])
    runs = [compare.load(p, "test") for p in (base, half)]
    v = compare.compare(runs, runs[0])[1].versus
    assert v.n == N // 2 and abs(v.mean - 0.1) < 1e-12


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"levels": 17}, "17 vs 256 pixel levels"),
        ({"fingerprint": "other"}, "other images (their data fingerprints differ)"),
        ({"keys": [f"x{i}" for i in range(N)]}, "no image in common"),
    ],
)
def test_evaluations_of_other_data_are_refused_in_one_line(tmp_path, capsys, hard_and_easy, kwargs, match):
    base = fake_run(tmp_path, "base", hard_and_easy)
    other = fake_run(tmp_path, "other", hard_and_easy, **kwargs)
    assert main(["compare", str(base), str(other), "--out", str(tmp_path / "c.csv")]) == 2
    err = capsys.readouterr().err
    assert f"other and base cannot be paired: {match}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.csv").exists() and not (tmp_path / "c.png").exists()


def test_bad_arguments_are_one_line(tmp_path, capsys, hard_and_easy):
    base = fake_run(tmp_path, "base", hard_and_easy)
    (tmp_path / "empty").mkdir()
    for args, match in (
        ([str(tmp_path / "nowhere")], "does not exist"),
        ([str(tmp_path / "empty")], "neither a run folder, an evaluation folder nor a folder of runs"),
        ([str(base), "--split", "val"], f"`aef-hpc eval {base} eval.split=val`"),
        ([str(base), str(base)], "a run is given twice"),
        ([str(base), "--baseline", "nope"], "--baseline nope: not among the runs compared (base)"),
        ([str(base), "--out", str(tmp_path)], "is a folder: give a file name"),
        ([str(base), "--out", str(tmp_path / "c.png")], "name a .csv file"),
    ):
        assert main(["compare", *args]) == 2, args
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1, err


def test_a_real_sweep_compared_from_its_folder(local_sweep, tmp_path, capsys):
    _, out, _ = local_sweep
    assert main(["compare", str(out), "--baseline", "short-s0", "--out", str(tmp_path / "c.csv")]) == 0
    printed = capsys.readouterr().out
    assert "(baseline)" in printed and "2 seeds" in printed
    rows = {r["name"]: r for r in csv.DictReader(open(tmp_path / "c.csv"))}
    assert set(rows) == {"long-s0", "long-s1", "short-s0", "short-s1", "long", "short"}
    for name in ("long-s0", "long-s1", "short-s1"):  # the same 64 test images: paired mean = difference of means
        own = json.loads((out / name / "finished.json").read_text())["bits_per_dim"]
        base = json.loads((out / "short-s0" / "finished.json").read_text())["bits_per_dim"]
        assert abs(float(rows[name]["diff_bits_per_dim"]) - (own - base)) < 1e-9
        assert int(rows[name]["paired_images"]) == 64
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_the_data_fingerprint_changes_with_any_pixel_and_only_then(tmp_path):
    from aef_hpc.data import ShardSource, TensorSource, load_embedded, write_shards

    splits = load_embedded("digits", 0.1, 0.2, 3)
    same = TensorSource(load_embedded("digits", 0.1, 0.2, 3))
    assert TensorSource(splits).fingerprint("test") == same.fingerprint("test") != same.fingerprint("val")
    splits.test[0, 0, 0, 0] += 1
    assert TensorSource(splits).fingerprint("test") != same.fingerprint("test"), "one pixel changed"
    prints = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):  # b: a written again; c: another split and order
        write_shards("digits", tmp_path / name, seed=seed, progress=False)
        prints[name] = ShardSource(str(tmp_path / name)).fingerprint("test")
    assert prints["a"] == prints["b"] != prints["c"]
