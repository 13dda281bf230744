"""The benchmarks run and write their CSV (their numbers are measured, never asserted)."""

import csv

import pytest

from aef_hpc.bench import data


def test_bench_data_writes_csv(tmp_path, float32_default):
    out = tmp_path / "data.csv"
    data.run(str(out), images=96, batch_size=8, workers=(0,), train_steps=1)
    rows = list(csv.DictReader(open(out)))
    loaders = {(r["shape"], r["loader"]) for r in rows}
    for shape in ("1x28x28", "3x64x64"):
        assert {(shape, "webdataset-png"), (shape, "webdataset-npy"), (shape, "png-files")} <= loaders
    assert all(float(r["images_per_s"]) > 0 and r["torch"] and r["date"] for r in rows)


def test_bench_kernels_cpu_smoke(tmp_path, float32_default):
    """The kernel benchmark's code path (interpreter timings are meaningless; a GPU gives the real numbers)."""
    from aef_hpc.kernels import bench

    out = tmp_path / "kernels.csv"
    bench.run(
        str(out),
        str(tmp_path / "kernels.png"),
        cpu_smoke=True,
        sizes={"7": 7},
        batch=3,
        providers=("triton", "eager"),
        warmup=0,
        repeats=1,
        copy_mb=1,
        model=dict(batch=2, latent=4, warmup=0, repeats=1, image=(3, 8, 8)),
    )
    rows = list(csv.DictReader(open(out)))
    assert {r["op"] for r in rows} == {
        "affine_coupling",
        "decoder_layer",
        "encoder_layer",
        "logit",
        "train_step_aef_linear_big",
    }
    assert {(r["provider"], r["mode"]) for r in rows if r["op"] == "logit"} == {
        (p, m) for p in ("triton", "eager") for m in ("forward", "backward", "full")
    }
    assert (tmp_path / "kernels.png").stat().st_size > 0


def test_bench_scale_counts_what_each_rank_holds(tmp_path):
    """The scale benchmark itself (2 ranks, ZeRO-3 and DDP, one timed step): ZeRO-3 halves the parameters and
    gradients, every count meets the ZeRO paper's (plus DeepSpeed's float32 master partition)."""
    from aef_hpc.bench import scale

    rows = scale.run(tmp_path / "scale.csv", engines=("ddp", "zero3"), ranks=(2,), warmup=1, repeats=1)
    assert not [r["error"] for r in rows if r["error"]]
    by = {(r["engine"], r["rank"]): r for r in rows}
    for rank in (0, 1):
        ddp, zero3 = by["ddp", rank], by["zero3", rank]
        assert ddp["params_mb"] == pytest.approx(ddp["expected_params_mb"], rel=0.01)
        assert ddp["optimizer_mb"] == pytest.approx(ddp["expected_optimizer_mb"], rel=0.01)
        assert zero3["params_mb"] == pytest.approx(zero3["expected_params_mb"], rel=0.02)
        assert zero3["params_mb"] <= 0.55 * ddp["params_mb"] and zero3["grads_mb"] <= 0.55 * ddp["grads_mb"]
        master = zero3["expected_params_mb"]  # DeepSpeed's float32 copy of the rank's partition
        assert zero3["optimizer_mb"] == pytest.approx(zero3["expected_optimizer_mb"] + master, rel=0.02)
    assert (tmp_path / "scale.csv").read_text().startswith("engine,world,rank,")


def test_bench_eval_runs_on_ranks_and_its_memory_is_flat_in_k(tmp_path):
    """The evaluation benchmark itself, tiny: 1 and 2 ranks, and the peak memory of K=32 vs K=512 at chunk 32
    (asserted loosely: importance sampling K times the batch at once would take hundreds of MB more)."""
    from aef_hpc.bench import eval as eval_bench

    rows = eval_bench.run(tmp_path / "eval.csv", images=64, num_samples=8, ks=(32, 512), models=("aef-linear",))
    assert not [r["error"] for r in rows if r["error"]]
    rates = [r["images_per_s"] for r in rows if r["kind"] == "throughput"]
    assert len(rates) == 2 and all(rate > 0 for rate in rates)
    small, large = (r["peak_mb"] for r in rows if r["kind"] == "memory")
    print(f"peak MB at K=32: {small}, at K=512: {large}")
    assert large < small + 40
