"""``aef-hpc eval`` on 1, 2 and 3 real ranks (torchrun, gloo) × 2 loader workers over real tar shards: every test
image exactly once, and the same per-image NLL whatever the number of ranks (noise keyed by eval.seed and key)."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from helpers import aef_hpc_exe
from shard_helpers import digits_shards
from test_distributed import ROOT, VENV_BIN

EVAL = ["data.num_workers=2", "eval.num_samples=8", "eval.repeats=2", "eval.chunk_size=3", "eval.batch_size=32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """aef-linear (importance-sampled) trained 4 steps on digits shards of 60 images (the test split: 6 shards)."""
    root = tmp_path_factory.mktemp("evalranks")
    digits_shards(root / "shards", samples_per_shard=60)
    args = ["model.name=aef-linear", "model.latent_dim=4", "train.steps=4", "train.val_every=4", "train.batch_size=32",
            f"data.path={root / 'shards'}", "eval.grid_samples=4", "eval.proposal_images=64",
            "eval.proposal_num_samples=4", *EVAL, f"run.out_dir={root}", "run.name=r", "--no-progress"]  # fmt: skip
    proc = subprocess.run([aef_hpc_exe(), "train", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "r"


def _evaluate(run, ranks: int, launcher: str = "torchrun") -> tuple[dict[str, float], dict]:
    if ranks == 1:
        command = [aef_hpc_exe(), "eval", str(run), *EVAL]
    elif launcher == "mpiexec":
        command = [str(VENV_BIN / "mpiexec"), "-n", str(ranks), sys.executable, "-m", "aef_hpc.cli", "eval", str(run),
                   *EVAL]  # fmt: skip
    else:
        command = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", str(ranks), "-m", "aef_hpc.cli",
                   "eval", str(run), *EVAL]  # fmt: skip
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = next((run / "eval").glob("*-test"))
    with open(folder / "records.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    nll = {r["key"]: float(r["nll_nats"]) for r in rows}
    assert len(nll) == len(rows), "every key once"
    return nll, json.loads((folder / "summary.json").read_text())


def test_two_and_three_ranks_give_one_rank_s_numbers(trained):
    one, summary = _evaluate(trained, 1)
    manifest = json.loads((trained.parent / "shards" / "manifest.json").read_text())
    assert len(one) == summary["count"] == sum(s["count"] for s in manifest["splits"]["test"])
    for ranks, launcher in ((2, "torchrun"), (3, "torchrun"), (2, "mpiexec")):
        many, summary_many = _evaluate(trained, ranks, launcher)
        assert set(many) == set(one) and summary_many["world_size"] == ranks
        worst = max(abs(many[k] - one[k]) / abs(one[k]) for k in one)
        print(f"{ranks} {launcher} ranks x 2 workers: {len(many)} images, largest relative NLL difference {worst:.1e}")
        assert worst < 1e-5
        assert summary_many["nll_nats"] == pytest.approx(summary["nll_nats"], rel=1e-6)
        assert summary_many["proposal_std"] == summary["proposal_std"]


def test_ranks_refuse_what_only_one_process_can_do(trained):
    proc = subprocess.run(
        [str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "aef_hpc.cli", "eval",
         str(trained), *EVAL, "eval.limit=10"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and "eval.limit=10 takes the first images of one process" in proc.stderr


def test_a_corrupt_test_shard_on_one_rank_stops_every_rank_and_merges_nothing(trained, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(trained.parent / "shards", shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    victim = manifest["splits"]["test"][1]["name"]
    data = (shards / victim).read_bytes()
    (shards / victim).write_bytes(data[: len(data) // 2])  # truncated mid-sample
    proc = subprocess.run(
        [str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "aef_hpc.cli", "eval",
         str(trained), *EVAL, f"data.path={shards}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if line.startswith("aef-hpc: error:")]
    assert proc.returncode != 0 and errors and any(victim in line for line in errors), proc.stderr[-2000:]
    tagged = [p for p in (trained / "eval").glob("*-test-data-*")]
    assert not [p for p in tagged if (p / "records.csv").exists()], "nothing merged"


def _command_line(process: psutil.Process) -> str:
    """A child's command line, empty for one that already exited (a zombie has none to read)."""
    try:
        return " ".join(process.cmdline())
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return ""


def test_an_evaluation_killed_on_one_rank_resumes_from_its_finished_shards(trained):
    one, summary_one = _evaluate(trained, 1)
    assert summary_one["shards_reused"] == 0
    folder = next((trained / "eval").glob("*-test"))
    command = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "aef_hpc.cli", "eval",
               str(trained), *EVAL, "eval.batch_size=4"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 120
    while not list((folder / "shards").glob("*.csv")) and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.01)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "aef_hpc.cli" in _command_line(p)]
    workers[-1].send_signal(signal.SIGKILL)  # one rank dies mid-evaluation; torchrun stops the other
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    finished = sorted((folder / "shards").glob("*.csv"))
    assert 0 < len(finished) < 6, "killed while shards were in flight"
    # mark one finished shard's records: a resumed evaluation must take them as they are, not evaluate it again
    with open(finished[0], newline="") as handle:
        kept = list(csv.DictReader(handle))
    with open(finished[0], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["key", "nll_nats", "ess"])
        writer.writeheader()
        writer.writerows({**r, "nll_nats": "12345.0"} for r in kept)
    resumed, summary = _evaluate(trained, 2)
    assert summary["shards_reused"] == len(finished)
    assert {k for k, v in resumed.items() if v == 12345.0} == {r["key"] for r in kept}, "finished shards skipped"
    resumed.update({r["key"]: float(r["nll_nats"]) for r in kept})  # unmarked: the uninterrupted evaluation's
    assert set(resumed) == set(one) and len(resumed) == len(one), "every key once"
    assert max(abs(resumed[k] - one[k]) / abs(one[k]) for k in one) < 1e-5
    mean = sum(resumed.values()) / len(resumed)
    assert mean == pytest.approx(summary_one["nll_nats"], rel=1e-6), "the uninterrupted summary"
    assert not (folder / "shards").exists(), "merged: the per-shard records are gone"


def test_ctrl_c_in_an_evaluation_says_what_is_kept_and_the_same_command_goes_on(trained):
    _evaluate(trained, 1)
    folder = next((trained / "eval").glob("*-test"))
    command = [aef_hpc_exe(), "eval", str(trained), *EVAL, "eval.batch_size=4"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 120
    while not list((folder / "shards").glob("*.csv")) and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1].strip().splitlines()
    finished = len(list((folder / "shards").glob("*.csv")))
    assert proc.returncode == 130 and 0 < finished < 6, err
    assert err[-1] == (
        f"aef-hpc: error: interrupted: the records of the {finished} shard(s) finished are kept in "
        f"{folder / 'shards'}; the same `aef-hpc eval` again evaluates only the others"
    )
    assert _evaluate(trained, 1)[1]["shards_reused"] == finished
