"""``aef-hpc sweep``: one training run per (config, seed), named ``<config-stem>-s<seed>`` under one folder.

Each run's state is read from its folder, so the same command run again picks up where the sweep stands:
``finished.json`` (done: skipped), a checkpoint or ``NO_CHECKPOINT`` (interrupted: resumed with ``--resume``), a
folder whose training died before its first checkpoint (started over), a folder locked by a training process or a
task still in the SLURM queue (skipped), no folder (started). Locally the runs go one after another (or N at a
time); on SLURM they are the tasks of one job array of ``launchers/slurm.sbatch``, each checkpointed and requeued on
preemption like a single run.
"""

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, flat_items, from_yaml, load_config
from ..engine.checkpoint import complete_checkpoints, write_atomic
from ..errors import ConfigError, Interrupted
from ..signals import STOP_FILE_VARIABLE
from ..train.run_dir import FINISHED, is_locked, mark_no_checkpoint, stopped_before_first_checkpoint

#: the sweep's own files inside its folder: job ids of submitted tasks, the tasks' argument files
STATE = ".sweep"
SBATCH = Path(__file__).resolve().parents[2] / "launchers" / "slurm.sbatch"


@dataclass
class SweepRun:
    """One (config, seed) of a sweep: its run folder, its place in the sweep (the SLURM array index) and state."""

    index: int
    config: Path
    seed: int
    folder: Path
    state: str = "new"
    """new | interrupted | restart (died before its first checkpoint) | finished | running | queued"""

    @property
    def name(self) -> str:
        return self.folder.name

    def train_args(self, overrides: list[str]) -> list[str]:
        """``aef-hpc train`` arguments of a new run; ``launchers/slurm.sbatch`` turns them into ``--resume`` itself."""
        return ["--config", str(self.config), *overrides, f"train.seed={self.seed}",
                f"run.out_dir={self.folder.parent}", f"run.name={self.name}"]  # fmt: skip

    def command_args(self, overrides: list[str]) -> list[str]:
        """What this run needs now: a new run, or ``--resume`` with the same overrides (as the sbatch script)."""
        if self.state == "new":
            return self.train_args(overrides)
        return ["--resume", str(self.folder), *self.train_args(overrides)[2:]]


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` or a range ``0-4``; each in [0, 2**63), none twice, at most 10,000."""
    seeds = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise ConfigError(f"--seeds {text!r}: write seeds as 0,1,2 or a range 0-4") from None
        if high < low or high - low >= 10_000 or len(seeds) > 10_000:
            raise ConfigError(f"--seeds {text!r}: a range goes up (0-4) and a sweep has at most 10,000 seeds")
        seeds += range(low, high + 1)
    if not seeds or len(set(seeds)) != len(seeds) or not all(0 <= s < 2**63 for s in seeds):
        raise ConfigError(f"--seeds {text!r}: give distinct seeds in [0, 2**63), e.g. 0,1,2")
    return seeds


def plan(configs: list[str], seeds: list[int], overrides: list[str], out: str | Path) -> list[SweepRun]:
    """Every (config, seed) with its state; every config checked with the overrides, and every existing run
    folder against what the sweep would train now, before anything is started."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give the folder that holds (or will hold) the sweep's runs")
    stems: dict[str, Path] = {}
    for config in configs:
        path = Path(config).resolve()
        if stems.setdefault(_stem(path), path) != path:
            raise ConfigError(
                f"{stems[_stem(path)]} and {path} would both name their runs {_stem(path)}-s<seed>: rename one"
            )
    queued = queued_tasks(out)
    runs = []
    for path in stems.values():
        for seed in seeds:
            run = SweepRun(len(runs), path, seed, out / f"{_stem(path)}-s{seed}")
            expected = load_config(path, run.train_args(overrides)[2:])  # one line naming the file if it is wrong
            if (expected.run.out_dir, expected.run.name) != (str(out), run.name):  # key=value is read as YAML
                raise ConfigError(
                    f"--out {out}: the path reads as {expected.run.out_dir!r} in a key=value setting (' #', ': '): "
                    "choose a plainer folder name"
                )
            run.state = "queued" if run.name in queued else _state(run.folder, expected)
            runs.append(run)
    return runs


def _stem(path: Path) -> str:
    return path.name.removesuffix(".yaml").removesuffix(".yml")


def _state(folder: Path, expected: Config) -> str:
    if not folder.exists():
        return "new"
    if not folder.is_dir():
        raise ConfigError(f"{folder} is a file where the sweep puts a run folder: move it away")
    if is_locked(folder):
        return "running"
    if (folder / "config.yaml").is_file():
        _check_same_config(folder, expected)
    if (folder / FINISHED).is_file():
        return "finished"
    if complete_checkpoints(folder) or stopped_before_first_checkpoint(folder):
        return "interrupted"
    if (folder / "config.yaml").is_file():
        return "restart"  # killed before its first checkpoint (no NO_CHECKPOINT: SIGKILL, a lost node)
    raise ConfigError(f"{folder} is not a run folder (no config.yaml): move it away or choose another --out")


def _check_same_config(folder: Path, expected: Config) -> None:
    """A run folder trained with other settings than the sweep's now is refused: its results would be mislabelled."""
    held = flat_items(from_yaml((folder / "config.yaml").read_text(), where=str(folder / "config.yaml")))
    # null: filled in by the run (the image shape and bit depth read from the data); where the folder lies is no
    # setting (a sweep folder moved or mounted elsewhere keeps its runs)
    wanted = flat_items(expected)
    differ = [k for k, v in wanted.items()
              if v is not None and k not in ("run.out_dir", "run.name") and held.get(k) != v]  # fmt: skip
    if differ:
        key = differ[0]
        raise ConfigError(
            f"{folder} was trained with {key}={held.get(key)!r} but the sweep now gives {key}="
            f"{wanted[key]!r}{f' (and {len(differ) - 1} more keys)' if len(differ) > 1 else ''}: use "
            "another --out for other settings, or the overrides the sweep was started with"
        )


def describe(runs: list[SweepRun], overrides: list[str]) -> str:
    width = max(len(r.name) for r in runs)
    lines = []
    for run in runs:
        what = {"finished": "skip (finished)", "running": "skip (being trained)", "queued": "skip (queued on SLURM)"}
        todo = what.get(run.state) or "train " + shlex.join(run.command_args(overrides))
        lines.append(f"{run.name:<{width}}  {run.state:<11}  {todo}")
    return "\n".join(lines)


def to_run(runs: list[SweepRun]) -> list[SweepRun]:
    return [r for r in runs if r.state in ("new", "interrupted", "restart")]


def _prepare(run: SweepRun) -> bool:
    """Just before a run starts: ``False`` if another process has started training it since the plan was made;
    a run that died before its first checkpoint is marked so that ``--resume`` starts it over (its logs go)."""
    if is_locked(run.folder):
        run.state = "running"
        return False
    if run.state == "restart":
        mark_no_checkpoint(run.folder, "its training stopped before its first checkpoint")
        run.state = "interrupted"
    return True


# -- local: runs one after another, or N at a time ----------------------------------------------------------------


def run_local(runs: list[SweepRun], overrides: list[str], parallel: int = 1, nproc: int = 1) -> list[SweepRun]:
    """Run every run that is not finished, ``parallel`` at a time, each with ``nproc`` ranks (torchrun); each
    one's output goes to ``OUT/logs/<name>.log``. Returns the runs that failed. Ctrl-C (or SIGTERM) asks every
    running training for a checkpoint at its next step (its stop file), waits for them and raises
    ``Interrupted``; a second Ctrl-C interrupts them at once (they keep their last checkpoint)."""
    pending, active, failed = list(to_run(runs)), {}, []
    env = dict(os.environ)
    if parallel > 1 and "OMP_NUM_THREADS" not in env:  # N trainings share the cores instead of each taking all
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // (parallel * nproc)))
    total, done = len(pending), 0
    try:
        while pending or active:
            while pending and len(active) < parallel:
                run = pending.pop(0)
                if not _prepare(run):
                    print(f"[{done}/{total} done] {run.name}: being trained by another process: left to it")
                    total -= 1
                    continue
                state = "resumed" if run.state == "interrupted" else "started"
                with _signals_held():  # a Ctrl-C now finds the process in ``active``
                    active[_start(run, overrides, nproc, env)] = (run, time.monotonic())
                print(f"[{done}/{total} done] {run.name}: {state} (log: {_log_path(run)})", flush=True)
            time.sleep(0.2)
            for proc in [p for p in active if p.poll() is not None]:
                run, started = active.pop(proc)
                done += 1
                print(f"[{done}/{total} done] {run.name}: {_outcome(run, proc.returncode, started)}", flush=True)
                if proc.returncode:
                    failed.append(run)
    except KeyboardInterrupt:
        _stop(active)
        names = ", ".join(run.name for run, _ in active.values())
        raise Interrupted(
            f"interrupted: {names or 'no run'} checkpointed where it stood; the same command resumes the sweep"
        ) from None
    return failed


def _stop(active: dict) -> None:
    """Ask every running training for a checkpoint (its stop file) and wait; a further Ctrl-C sends each one
    SIGINT (it stops at once, keeping its last checkpoint), and waiting goes on: none is left untended."""
    for run, _ in active.values():
        _stop_file(run).touch()
    print(f"aef-hpc: checkpointing {len(active)} run(s) (Ctrl-C again: stop them at once)", file=sys.stderr, flush=True)
    while any(proc.poll() is None for proc in active):
        try:
            for proc in active:
                proc.wait()
        except KeyboardInterrupt:
            for proc in active:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)  # their own session: the terminal's Ctrl-C did not reach them
    for run, _ in active.values():
        _stop_file(run).unlink(missing_ok=True)


@contextlib.contextmanager
def _signals_held():
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _stop_file(run: SweepRun) -> Path:
    return run.folder.parent / STATE / f"{run.name}.stop"


def _log_path(run: SweepRun) -> Path:
    return run.folder.parent / "logs" / f"{run.name}.log"


def _start(run: SweepRun, overrides: list[str], nproc: int, env: dict) -> subprocess.Popen:
    if nproc > 1:
        launcher = ["-m", "aef_hpc.torchrun", "--standalone", "--nproc-per-node", str(nproc), "-m", "aef_hpc.cli"]
    else:
        launcher = ["-m", "aef_hpc.cli"]
    command = [sys.executable, *launcher, "train", *run.command_args(overrides), "--no-progress"]
    log = _log_path(run)
    log.parent.mkdir(parents=True, exist_ok=True)
    _stop_file(run).parent.mkdir(exist_ok=True)
    _stop_file(run).unlink(missing_ok=True)
    env = {**env, STOP_FILE_VARIABLE: str(_stop_file(run))}  # Ctrl-C: a checkpoint at the next step, as SIGUSR1
    with open(log, "a") as handle:
        handle.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(command)}\n")
        handle.flush()
        # its own session: the terminal's Ctrl-C reaches the sweep only, which asks for a checkpoint instead
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _outcome(run: SweepRun, code: int, started: float) -> str:
    took = f"{time.monotonic() - started:.0f} s"
    if code == 0 and (run.folder / FINISHED).is_file():
        result = json.loads((run.folder / FINISHED).read_text())
        return f"finished in {took}: test {result['bits_per_dim']:.4f} bits/dim (step {result['best_step']})"
    lines = [line for line in _log_path(run).read_text(errors="replace").splitlines() if line.strip()]
    return f"failed (exit status {code}) after {took}: {lines[-1] if lines else ''} (log: {_log_path(run)})"


# -- SLURM: one job array ---------------------------------------------------------------------------------------


def queued_tasks(out: Path) -> set[str]:
    """Names of this sweep's runs whose SLURM tasks are still pending or running (``squeue``; none without it)."""
    jobs = _jobs(out)
    if not jobs or shutil.which("squeue") is None:
        return set()
    arrays = sorted({task.split("_")[0] for task in jobs.values()})
    listed = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(arrays)], capture_output=True, text=True)
    if listed.returncode and "Invalid job id" not in listed.stderr:  # gone from the queue long ago: not an error
        reason = (listed.stderr.strip().splitlines() or ["no message"])[-1]
        raise ConfigError(f"squeue failed ({reason}): cannot tell which runs are still queued; try again")
    alive = set(listed.stdout.split())
    return {name for name, task in jobs.items() if task in alive}


def _jobs(out: Path) -> dict[str, str]:
    path = out / STATE / "jobs.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def sbatch_command(runs: list[SweepRun], out: Path, sbatch_args: list[str], tasks: str = "<tasks>") -> list[str]:
    """The job array of the runs not finished; the tasks' arguments travel in ``AEF_HPC_TASKS`` (``--export``
    named here, so a site's ``SBATCH_EXPORT=NONE`` cannot drop it)."""
    if any(a.startswith("--export") for a in sbatch_args):
        raise ConfigError("--sbatch-args: --export is the sweep's (the tasks' arguments travel in AEF_HPC_TASKS)")
    indices = ",".join(str(r.index) for r in to_run(runs))
    return ["sbatch", "--parsable", f"--array={indices}", f"--job-name=sweep-{out.name}",
            f"--output={out / 'logs' / 'slurm-%A_%a.out'}", f"--export=ALL,AEF_HPC_TASKS={tasks}", *sbatch_args,
            str(SBATCH)]  # fmt: skip


def submit_array(runs: list[SweepRun], overrides: list[str], out: Path, sbatch_args: list[str]) -> str:
    """Write each task's ``train`` arguments (NUL-separated, read by ``launchers/slurm.sbatch`` through
    ``AEF_HPC_TASKS``) and submit one job array of the runs not finished; returns the array's job id."""
    if shutil.which("sbatch") is None:
        raise ConfigError("--executor slurm: sbatch is not on PATH: run the sweep on a SLURM login node")
    if "," in str(out):
        raise ConfigError(f"--out {out}: a comma cannot travel in sbatch's --export list: choose a folder without one")
    launch = [run for run in to_run(runs) if _prepare(run)]  # marked before a task can start
    if not launch:
        raise ConfigError("every run to submit is being trained by another process now: nothing submitted")
    created = [p for p in (out / "logs", out / STATE, out, *out.parents) if not p.exists()]
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / STATE).mkdir(exist_ok=True)
    tasks = Path(tempfile.mkdtemp(prefix="tasks-", dir=out / STATE))  # per submission: queued tasks keep theirs
    for run in launch:
        (tasks / f"{run.index}.args").write_bytes(b"\0".join(a.encode() for a in run.train_args(overrides)) + b"\0")
    env = {**os.environ, "AEF_HPC_HOME": os.getcwd(), "VENV": sys.prefix}
    done = subprocess.run(sbatch_command(launch, out, sbatch_args, str(tasks)), capture_output=True, text=True, env=env)
    if done.returncode:
        shutil.rmtree(tasks, ignore_errors=True)
        for folder in created:  # innermost first: what this submission made, nothing else
            with contextlib.suppress(OSError):
                folder.rmdir()
        reason = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise ConfigError(f"sbatch refused the job array: {reason}")
    job = done.stdout.strip().split(";")[0]
    jobs = {**_jobs(out), **{run.name: f"{job}_{run.index}" for run in launch}}
    write_atomic(out / STATE / "jobs.json", json.dumps(jobs, indent=2))
    return job


def check_parallel(parallel: int, nproc: int) -> None:
    if not 1 <= parallel <= 1024 or not 1 <= nproc <= 1024:
        raise ConfigError(f"--parallel {parallel} and --nproc {nproc} must be 1 to 1024")
    if parallel * nproc > 4 * (os.cpu_count() or 1):
        raise ConfigError(
            f"--parallel {parallel} x --nproc {nproc} processes on {os.cpu_count()} CPUs: lower them "
            "(or use --executor slurm)"
        )


def summary_line(runs: list[SweepRun], failed: list[SweepRun]) -> str:
    counts = {}
    for run in runs:
        state = "failed" if run in failed else run.state
        counts[state] = counts.get(state, 0) + 1
    said = {"new": "trained", "interrupted": "resumed", "finished": "already finished", "running": "being trained "
            "elsewhere", "queued": "queued on SLURM", "failed": "failed"}  # fmt: skip
    return ", ".join(f"{n} {said.get(s, s)}" for s, n in counts.items())
