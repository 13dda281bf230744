"""``aef-hpc bench train`` runs and writes its CSV (its timings are measured, never asserted)."""

import csv

from aef_hpc.bench import train


def test_bench_train_writes_csv(tmp_path, float32_default, capsys):
    out = tmp_path / "train.csv"
    rows = train.run(
        str(out), cases=("small",), models=("aef-linear", "vae"), modes=("eager",), warmup=1, repeats=2, batch=8
    )
    written = list(csv.DictReader(open(out)))
    assert len(rows) == len(written) == 2
    assert "bench train case 2/2 " in capsys.readouterr().err
    columns = {
        "model", "arch", "shape", "batch", "mode", "ms_per_step", "steps_per_s", "images_per_s", "compile_s",
        "compiled_part", "peak_rss_mb", "peak_cuda_mb", "step_vs_vae", "error", "date", "device", "torch", "git_sha",
    }  # fmt: skip
    assert columns <= set(written[0])
    assert {(r["model"], r["arch"], r["shape"], r["batch"], r["mode"]) for r in written} == {
        ("aef-linear", "small", "1x28x28", "8", "eager"),
        ("vae", "small", "1x28x28", "8", "eager"),
    }
    for r in written:
        assert r["error"] == ""
        assert float(r["ms_per_step"]) > 0 and float(r["steps_per_s"]) > 0 and float(r["images_per_s"]) > 0
        peak = r["peak_cuda_mb"] or r["peak_rss_mb"]  # the one the device measures
        assert float(peak) > 0
        assert float(r["step_vs_vae"]) > 0
    assert float(next(r for r in written if r["model"] == "vae")["step_vs_vae"]) == 1.0
