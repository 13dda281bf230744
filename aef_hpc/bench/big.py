"""``aef-hpc bench scale --big``: a model larger than one process, trained on two ZeRO-3 ranks under a memory cap.

The model is aef-linear with the big (VDVAE-like) nets widened (``model.width``, default 2,880: Ψ = 311 M
parameters) on the embedded digits, so that its float32 Adam training state, 16Ψ bytes (parameters, gradients,
two moments), exceeds the cap. Every case is a real ``aef-hpc`` command whose processes each run under the cap,
``RLIMIT_DATA`` (the private writable memory a process may map: what it allocates, about its RSS here; the
address-space limit would also count the ~0.5 GB of libraries mapped from disk):

1. ``one process``: ``aef-hpc train`` with ``engine=single``; expected to stop with one out-of-memory line;
2. ``zero3 train``: 2 ranks (``torchrun``) under ZeRO-3 (``configs/deepspeed/zero3-lean.yaml``; parameters built
   partitioned under ``zero.Init``), ``steps`` steps, a validation and checkpoint, the final test and samples;
3. ``zero3 resume``: the same run resumed on 2 ranks for ``steps`` more steps;
4. ``export``: ``aef-hpc export`` of the resumed run in one process (the checkpoint consolidated one rank's file at
   a time into the model's own tensors: one copy of the weights).

Each process's peak RSS (``VmHWM``, polled every 0.2 s) is reported against 16Ψ/N, the ZeRO paper's per-rank share
of float32 Adam training state over N processes. ``--smoke``: the same cases on a tiny width and no cap, to check
the benchmark itself (the suite runs it).
"""

import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..progress import Progress
from .report import write_csv

WIDTH = 2880
SMOKE_WIDTH = 32
CAP_GIB = 4.5
STEPS = 2
MODEL = ["model.name=aef-linear", "model.architecture=big", "model.latent_dim=16", "model.alpha=0.05",
         "model.prior_flow=maf", "model.posterior_flow=maf"]  # fmt: skip
RUN = ["train.batch_size=4", "train.lr=1e-4", "train.log_every=1", "train.device=cpu", "data.val_fraction=0.02",
       "data.test_fraction=0.02", "eval.limit=8", "eval.num_samples=4", "eval.repeats=1",
       "eval.select_proposal_std=false", "eval.grid_samples=4", "eval.batch_size=4"]  # fmt: skip
ZERO3 = ["engine=deepspeed", "deepspeed.config=configs/deepspeed/zero3-lean.yaml"]
ROOT = Path(__file__).resolve().parents[2]


def parameter_count(width: int) -> int:
    """Ψ of the benchmark's model, counted on the meta device (nothing allocated)."""
    from ..config import load_config
    from ..models.from_config import model_from_config

    cfg = load_config(None, [*MODEL, f"model.width={width}"])
    with torch.device("meta"):
        model = model_from_config(cfg.model, (1, 8, 8))
    return sum(p.numel() for p in model.parameters())


def _peak_rss(pid: int) -> int | None:
    """``VmHWM`` of ``pid`` in bytes (``None`` once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _rank(pid: int) -> str:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return ""
    found = [e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"RANK=")]
    return found[0] if found else ""


def _watched(command: list[str], cap: int | None, log: Path) -> tuple[int, float, dict[str, int]]:
    """Run ``command`` with every process under ``cap`` bytes (``RLIMIT_DATA``; ``None``: no cap), its output in
    ``log``; returns its exit status, wall seconds and the peak RSS of each of its Python processes, by rank."""
    import psutil

    def limit():
        if cap is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))

    peaks: dict[int, int] = {}
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=limit)
        ranks: dict[int, str] = {}
        while proc.poll() is None:
            try:
                family = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
            except psutil.Error:
                family = [proc.pid]
            for pid in family:
                peak = _peak_rss(pid)
                if peak is not None:
                    peaks[pid] = max(peak, peaks.get(pid, 0))
                    if not ranks.get(pid):  # read again: a child polled between fork and exec has no RANK yet
                        ranks[pid] = _rank(pid)
            time.sleep(0.2)
    wall = time.monotonic() - start
    if any(ranks.values()):  # a launcher and its ranks: the ranks only (a data worker counts as its rank)
        peaks = {pid: v for pid, v in peaks.items() if ranks.get(pid)}
    by_rank: dict[str, int] = {}
    for pid, peak in peaks.items():
        rank = ranks.get(pid) or "0"
        by_rank[rank] = max(peak, by_rank.get(rank, 0))
    return proc.returncode, wall, by_rank


def _error_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if "aef-hpc: error:" in line]
    return lines[0].split("aef-hpc: error:", 1)[1].strip() if lines else ""


def _losses(run: Path) -> list[float]:
    """The training objective of every step of ``run`` (``train.log_every=1``)."""
    from ..models import ExpandedAEF
    from ..train.run_dir import read_metrics

    try:
        rows = read_metrics(run)
    except OSError:
        return []
    return [float(r["value"]) for r in rows if r["split"] == "train" and r["metric"] == ExpandedAEF.loss_name]


def run(out: str | Path, width: int = WIDTH, cap_gib: float | None = CAP_GIB, steps: int = STEPS) -> list[dict]:
    """The four cases, one CSV row per process; their run folders and logs go beside ``out`` (``<out>.d/``)."""
    out = Path(out)
    work = out.with_suffix(".d")
    work.mkdir(parents=True, exist_ok=True)
    numel = parameter_count(width)
    cap = None if cap_gib is None else int(cap_gib * 2**30)
    exe = str(Path(sys.executable).with_name("aef-hpc"))
    two = [sys.executable, "-m", "aef_hpc.torchrun", "--standalone", "--nproc-per-node", "2", "-m", "aef_hpc.cli"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    common = [*MODEL, f"model.width={width}", *RUN, f"run.out_dir={work}", f"train.steps={steps}",
              f"train.val_every={steps}"]  # fmt: skip
    zero3 = work / f"zero3-{stamp}"
    cases = [
        ("one process", 1, [exe, "train", *common, "engine=single", f"run.name=one-process-{stamp}"]),
        ("zero3 train", 2, [*two, "train", *common, *ZERO3, f"run.name={zero3.name}"]),
        ("zero3 resume", 2, [*two, "train", "--resume", str(zero3), f"train.steps={2 * steps}"]),
        ("export", 1, [exe, "export", str(zero3)]),
    ]
    rows, bar = [], Progress(len(cases), "bench scale --big", "case")
    for name, processes, command in cases:
        log = work / f"{name.replace(' ', '-')}-{stamp}.log"
        status, wall, peaks = _watched(command, cap, log)
        losses = _losses(zero3) if name.startswith("zero3") and status == 0 else []
        for rank, peak in sorted(peaks.items()):
            rows.append({
                "case": name, "processes": processes, "rank": rank, "params_million": round(numel / 1e6, 2),
                "cap_gib": "" if cap is None else cap_gib, "status": status, "wall_s": round(wall, 1),
                "peak_rss_gib": round(peak / 2**30, 2), "adam_state_per_process_gib": round(16 * numel / processes
                / 2**30, 2), "losses_finite": bool(losses) and all(map(math.isfinite, losses)),
                "error": _error_line(log)[:400], "log": str(log),
            })  # fmt: skip
        bar.update()
    bar.close()
    write_csv(rows, out)
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'case':13s} {'rank':>4s} {'status':>6s} {'wall s':>7s} {'peak RSS GiB':>12s} {'16Ψ/N GiB':>9s}  note"]
    for r in rows:
        note = r["error"] or ("finite losses" if r["losses_finite"] else "")
        lines.append(f"{r['case']:13s} {r['rank']:>4} {r['status']:>6} {r['wall_s']:>7.1f} {r['peak_rss_gib']:>12.2f} "
                     f"{r['adam_state_per_process_gib']:>9.2f}  {note[:160]}")  # fmt: skip
    if rows:
        cap = rows[0]["cap_gib"]
        lines.insert(0, f"Ψ = {rows[0]['params_million']} M parameters; cap per process: "
                        f"{f'{cap} GiB (RLIMIT_DATA)' if cap != '' else 'none'}")  # fmt: skip
    return "\n".join(lines)
