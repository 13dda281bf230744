"""The benchmarks run and write their CSV (their numbers are measured, never asserted)."""

import csv

from aef_hpc.bench import data


def test_bench_data_writes_csv(tmp_path, float32_default):
    out = tmp_path / "data.csv"
    data.run(str(out), images=96, batch_size=8, workers=(0,), train_steps=1)
    rows = list(csv.DictReader(open(out)))
    loaders = {(r["shape"], r["loader"]) for r in rows}
    for shape in ("1x28x28", "3x64x64"):
        assert {(shape, "webdataset-png"), (shape, "webdataset-npy"), (shape, "png-files")} <= loaders
    assert all(float(r["images_per_s"]) > 0 and r["torch"] and r["date"] for r in rows)
