"""``aef-hpc bench scale --big`` itself (its numbers are measured, never asserted): every case runs and reports
each process; bad options are one line. Its own file, so that the test workers share the suite evenly."""

import csv
import subprocess

import pytest
from helpers import aef_hpc_exe


def test_bench_scale_big_runs_every_case_and_reports_each_process(tmp_path):
    """The big-model benchmark itself, on a tiny width and no cap (``--cpu-smoke``): one process, 2 ZeRO-3 ranks
    trained and resumed with finite losses, the export; a row per process with its peak RSS and 16Ψ/N."""
    out = tmp_path / "big.csv"
    proc = subprocess.run([aef_hpc_exe(), "bench", "scale", "--big", "--cpu-smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = list(csv.DictReader(out.open()))
    cases = [(r["case"], r["rank"]) for r in rows]
    assert cases == [("one process", "0"), ("zero3 train", "0"), ("zero3 train", "1"), ("zero3 resume", "0"),
                     ("zero3 resume", "1"), ("export", "0")], cases  # fmt: skip
    assert all(r["status"] == "0" and not r["error"] and float(r["peak_rss_gib"]) > 0.1 for r in rows), rows
    assert all(r["losses_finite"] == "True" for r in rows if r["case"].startswith("zero3"))
    psi = float(rows[0]["params_million"]) * 1e6
    assert float(rows[1]["adam_state_per_process_gib"]) == pytest.approx(16 * psi / 2 / 2**30, abs=0.01)
    exported = list((tmp_path / "big.d").glob("zero3-*/export/step-000004/model.safetensors"))
    assert len(exported) == 1, "the resumed run (step 4) exported"
    assert "cap per process: none" in proc.stdout


@pytest.mark.parametrize(
    "args,match",
    [
        (["eval", "--big"], "--big is a case of `bench scale`"),
        (["scale", "--width", "8"], "--width and --memory-cap are options of `aef-hpc bench scale --big`"),
        (["scale", "--big", "--width", "0"], "--width=0"),
        (["scale", "--big", "--memory-cap", "-1"], "--memory-cap=-1.0"),
        (["scale", "--big", "--memory-cap", "inf"], "--memory-cap=inf"),
        (["scale", "--big", "--traffic"], "--traffic is an option of `bench kernels`"),
    ],
)
def test_bench_scale_big_bad_options_are_one_line(tmp_path, capsys, args, match):
    from aef_hpc.cli import main

    assert main(["bench", *args, "--out", str(tmp_path / "b.csv")]) == 2
    assert match in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
