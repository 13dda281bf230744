"""``scripts/gpu_check.sh --cpu-smoke``: every step of the GPU check, tiny, on the CPU (Triton's interpreter, gloo),
so the script a lent GPU runs first is known to work before a GPU is there. Speed is not checked: a GPU gives the
numbers."""

import csv
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = (
    "kernel_tests",
    "bench_kernels",
    "bench_train",
    "bench_eval_vs_limit",
    "train_2ranks_ddp",
    "train_2ranks_zero3",
)


def test_the_cpu_smoke_runs_every_step_and_writes_every_csv_under_one_folder(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == list(STEPS)
    assert all(": exit 0 in " in line for line in summary), summary
    for name in ("kernels.csv", "train-kernels-eager.csv", "eval-vs-limit.csv"):
        rows = list(csv.DictReader(open(out / name)))
        assert rows and all(not r.get("error") for r in rows), (name, rows)
    for engine in ("ddp", "zero3"):
        finished = json.loads((out / "runs" / engine / "finished.json").read_text())
        assert finished["best_step"] == 2, finished
        assert json.loads((out / "runs" / engine / "env.json").read_text())[0]["world_size"] == 2
        assert (out / f"train_2ranks_{engine}.log").is_file()
    assert "torch" in (out / "environment.txt").read_text()


def test_it_refuses_a_folder_with_results_and_an_unknown_option(tmp_path):
    (tmp_path / "kept.csv").write_text("a result")
    cases = (([str(tmp_path)], "exists and is not empty"), (["--gpu"], "unknown option --gpu"),
             ([str(tmp_path / "a"), str(tmp_path / "b")], "one output folder"))  # fmt: skip
    for args, said in cases:
        proc = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke", *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and said in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["kept.csv"]
