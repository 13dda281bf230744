"""The benchmarks run and write their CSV (their numbers are measured, never asserted)."""

import csv

import pytest
import torch

from aef_hpc.bench import data


def test_bench_data_writes_csv(tmp_path, float32_default, capsys):
    out = tmp_path / "data.csv"
    data.run(str(out), images=96, batch_size=8, workers=(0,), train_steps=1)
    assert "bench data case 8/8 " in capsys.readouterr().err.splitlines()[-1]  # progress (at least its last line)
    rows = list(csv.DictReader(open(out)))
    loaders = {(r["shape"], r["loader"]) for r in rows}
    for shape in ("1x28x28", "3x64x64"):
        assert {(shape, "webdataset-png"), (shape, "webdataset-npy"), (shape, "png-files")} <= loaders
    assert all(float(r["images_per_s"]) > 0 and r["torch"] and r["date"] for r in rows)


def test_bench_kernels_cpu_smoke(tmp_path, float32_default, capsys):
    """The kernel benchmark's code path (interpreter timings are meaningless; a GPU gives the real numbers)."""
    from aef_hpc.bench import kernels

    out = tmp_path / "kernels.csv"
    kernels.run(
        str(out),
        str(tmp_path / "kernels.png"),
        cpu_smoke=True,
        sizes={"7": 7},
        batch=3,
        providers=("triton", "eager"),
        warmup=0,
        repeats=3,
        copy_mb=1,
        model=dict(batch=2, latent=4, warmup=0, repeats=1, image=(3, 8, 8)),
    )
    assert "bench kernels case 5/5 " in capsys.readouterr().err
    rows = list(csv.DictReader(open(out)))
    assert {(r["op"], r["case"]) for r in rows} == {
        ("affine_coupling", "full"),
        ("decoder_layer", "full"),
        ("encoder_layer", "full"),
        ("logit", "full"),
        ("decoder_loss", "independent"),
        ("train_step_aef_linear_big", "step"),
    }
    assert {(r["provider"], r["mode"]) for r in rows if r["op"] == "decoder_loss"} == {
        (p, m) for p in ("triton", "eager") for m in ("forward", "backward", "full")
    }
    for r in rows:
        assert float(r["ms_p20"]) <= float(r["ms_p50"]) <= float(r["ms_p80"])
        assert r["date"] and r["device"] and r["torch"] and r["triton"]
    ops = [r for r in rows if r["op"] != "train_step_aef_linear_big"]
    for r in ops:
        assert float(r["bytes_per_elem"]) > 0 and float(r["min_bytes_per_elem"]) > 0
        assert float(r["min_gbps"]) >= 0 and float(r["frac_copy_bw"]) >= 0  # not NaN (tiny: may round to 0)
    loss = {(r["provider"], r["mode"]): r for r in ops if r["op"] == "decoder_loss"}
    assert [float(loss["triton", m]["min_bytes_per_elem"]) for m in ("forward", "backward", "full")] == [8, 16, 24]
    triton_rows = [r for r in rows if r["provider"] == "triton"]
    assert all(float(r["speedup_vs_eager"]) > 0 for r in triton_rows)
    assert all(r["speedup_vs_eager"] == "nan" for r in rows if r["provider"] == "eager")
    assert (tmp_path / "kernels.png").stat().st_size > 0


@pytest.mark.parametrize("provider", ["triton", "eager"])
def test_kernel_runner_does_not_accumulate_gradients(provider):
    """Two timed backward runs on one saved graph leave each leaf the gradient of one backward."""
    from aef_hpc.bench.kernel_cases import CASES, Runner, make_inputs, provider_fn
    from aef_hpc.bench.timing import time_runs

    case = next(c for c in CASES if c.op == "decoder_loss")
    leaves, grads = make_inputs(case, 3, 7, torch.device("cpu"), torch.float64)
    runner = Runner(provider_fn(case, provider), leaves, grads)
    time_runs(runner.mode("backward"), torch.device("cpu"), warmup=1, repeats=2, reset=runner.reset)
    once = torch.autograd.grad(case.reference(*leaves), leaves, grads)
    for leaf, expected in zip(leaves, once, strict=True):
        torch.testing.assert_close(leaf.grad, expected)


def test_traffic_table_of_the_decoder_loss_is_near_its_minimum():
    """The Triton counter of the loss path: 24 bytes per float32 element forward+backward, within 10 %."""
    from aef_hpc.bench.traffic import markdown, traffic_table

    rows = traffic_table(torch.float32, batch=16, n=64)
    full = next(r for r in rows if r["op"] == "decoder_loss" and r["mode"] == "full")
    assert full["minimum"] == 24 and full["triton"] == pytest.approx(24, rel=0.1)
    assert all(r["triton"] >= r["minimum"] for r in rows)
    assert markdown(rows).count("\n") == len(rows) + 1


def test_host_table_times_the_driver_without_launching_and_says_so(tmp_path, capsys):
    """``bench kernels --host``: every case and mode has a positive host time for the driver and for eager, the
    programs are skipped only inside the table (a fused op launches again after it). ``--host`` with another
    verb, or with ``--traffic``, is one line and writes nothing."""
    from aef_hpc.bench import host
    from aef_hpc.bench.kernel_cases import CASES
    from aef_hpc.cli import main
    from aef_hpc.kernels import triton_launches, use_kernels
    from aef_hpc.kernels.fused import rowwise
    from aef_hpc.kernels.logit import logit_preprocess

    rows = host.host_table(calls=3)
    assert {(r["op"], r["mode"]) for r in rows} == {(c.op, m) for c in CASES for m in host.MODES}
    assert all(r["triton_host_us"] > 0 and r["eager_us"] > 0 for r in rows)
    assert not isinstance(rowwise.forward_program, host._NoLaunch), "the programs are put back"
    before = triton_launches["logit"]
    with use_kernels("triton"):
        y, logdet = logit_preprocess(torch.rand(2, 5) * 0.9 + 0.05, 0.05)
    assert triton_launches["logit"] == before + 1 and torch.isfinite(logdet).all()
    assert host.markdown(rows).count("\n") == len(rows) + 1
    for args, match in (
        (["train", "--host"], "--host is an option of `bench kernels`"),
        (["kernels", "--host", "--traffic"], "--traffic and --host are two tables"),
    ):
        assert main(["bench", *args, "--out", str(tmp_path / "h.csv")]) == 2
        assert match in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_bench_scale_counts_what_each_rank_holds(tmp_path, capsys):
    """The scale benchmark itself (2 ranks, ZeRO-3 and DDP, one timed step): ZeRO-3 halves the parameters and
    gradients, every count meets the ZeRO paper's (plus DeepSpeed's float32 master partition)."""
    from aef_hpc.bench import scale

    rows = scale.run(tmp_path / "scale.csv", engines=("ddp", "zero3"), ranks=(2,), warmup=1, repeats=1)
    assert "bench scale case 2/2 " in capsys.readouterr().err
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


def test_bench_eval_runs_on_ranks_and_its_memory_is_flat_in_k(tmp_path, capsys):
    """The evaluation benchmark itself, tiny: 1 and 2 ranks, and the peak memory of K=32 vs K=512 at chunk 32
    (asserted loosely: importance sampling K times the batch at once would take hundreds of MB more)."""
    from aef_hpc.bench import eval as eval_bench

    rows = eval_bench.run(tmp_path / "eval.csv", images=64, num_samples=8, ks=(32, 512), models=("aef-linear",))
    assert "bench eval case 4/4 " in capsys.readouterr().err
    assert not [r["error"] for r in rows if r["error"]]
    rates = [r["images_per_s"] for r in rows if r["kind"] == "throughput"]
    assert len(rates) == 2 and all(rate > 0 for rate in rates)
    small, large = (r["peak_mb"] for r in rows if r["kind"] == "memory")
    print(f"peak MB at K=32: {small}, at K=512: {large}")
    assert large < small + 40


def test_bench_eval_vs_limit_rates_each_case_against_the_same_run_s_matmul_peak(tmp_path, capsys, float32_default):
    """The utilisation benchmark itself, tiny (one model, 8 images, K=8): the peak row is 100 %, every training and
    evaluation row has FLOPs, a rate and the profile's top ops; the default evaluation's NLLs equal the model's own
    layout's to float32 rounding; the decoder's layers each get a row."""
    from aef_hpc.bench import limit

    rows = limit.run(tmp_path / "limit.csv", repeats=1, images=8, num_samples=8, models=("vae",))
    assert "bench eval --vs-limit case" in capsys.readouterr().err
    peak, *cases = rows
    assert peak["kind"] == "peak" and peak["pct_of_peak"] == 100.0 and peak["gflop_per_s"] > 0
    kinds = {(r["kind"], r["variant"]) for r in cases}
    assert {("train", "fp32"), ("eval", "before"), ("eval", "fp32")} <= kinds
    for r in (r for r in cases if r["kind"] in ("train", "eval")):
        assert r["gflop"] > 0 and 0 < r["pct_of_peak"] and "aten::" in r["top_ops"], r
    fp32 = next(r for r in cases if (r["kind"], r["variant"]) == ("eval", "fp32"))
    assert float(fp32["max_abs_diff"]) <= 1.3e-6 * 28 * 28
    layers = [r["variant"] for r in cases if r["kind"] == "layer"]
    assert any(v.startswith("ConvTranspose2d") for v in layers) and any(v.startswith("Linear") for v in layers)
    # the decoder at the default's draws per pass (8 images: all K=8 at once, 64 rows) and at before's 32 (64 too:
    # K=8 < 32), one pass each
    assert {r["calls"] for r in cases if r["kind"] == "layer"} == {1}
    assert "Linear (64, 2)" in layers
    train_layers = [r for r in cases if r["kind"] == "train-layer"]
    total = next(r for r in cases if r["kind"] == "train-layers")
    step = next(r for r in cases if (r["kind"], r["variant"]) == ("train", "fp32"))
    kinds = {r["variant"].split()[0] for r in train_layers}
    assert {"Conv2d", "ConvTranspose2d", "Linear", "MaskedLinear"} <= kinds, kinds
    assert all(r["ms"] > 0 and r["calls"] >= 1 for r in train_layers)  # (a rate rounds to 0.0 on a loaded machine)
    # the layers' FLOPs are the step's (convolutions, linear and masked layers are all it counts)
    assert abs(total["gflop"] - step["gflop"]) <= 1e-3 * step["gflop"], (total, step)
    assert total["variant"] == f"{len(train_layers)} layers"
    assert (tmp_path / "limit.csv").read_text().startswith("kind,model,variant,ms,gflop,")
