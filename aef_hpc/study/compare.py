"""``aef-hpc compare``: test bits/dim of many runs, and each against a baseline *paired* over the images both
evaluated.

A run's evaluation is ``RUN/eval/<best checkpoint>-<split>/`` (its ``records.csv`` has one bits/dim per image,
keyed by image). For runs A and baseline B on the same images, the paired difference is the mean of
``d_i = a_i - b_i`` with standard error ``sd(d) / sqrt(n)``: per-image difficulty cancels, so it is far tighter than
the unpaired ``sqrt(se_A² + se_B²)`` when the runs agree on which images are hard. Seeds of one config
(``<stem>-s<seed>``) are aggregated: the mean over seeds, their spread (standard deviation), and the paired
difference of the per-image mean over seeds.
"""

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from ..config import from_yaml
from ..errors import ConfigError

SEED_SUFFIX = re.compile(r"-s(\d+)$")


@dataclass
class Evaluated:
    """One run's evaluation of a split: per-image bits/dim by key, and what they were computed on."""

    name: str
    run: Path
    folder: Path
    model: str
    latent_dim: int
    bits: dict[str, float]
    levels: int
    image_shape: list[int] | None
    data: str
    """what identifies the images: the summary's data fingerprint (older summaries: the data settings)"""

    @property
    def group(self) -> str:
        """The config this run is a seed of (``<stem>-s<seed>`` -> ``<stem>``)."""
        return SEED_SUFFIX.sub("", self.run.name)


@dataclass
class Paired:
    """A paired difference ``mean(a_i - b_i)`` over ``n`` shared images, with its standard error and 95 % interval
    (Student's t, n - 1 degrees of freedom), and the unpaired standard error for contrast."""

    n: int
    mean: float
    se: float
    low: float
    high: float
    unpaired_se: float


def paired(a: np.ndarray, b: np.ndarray) -> Paired:
    """``a`` and ``b``: the same images' values, in the same order."""
    d = a - b
    n = len(d)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    half = float(stats.t.ppf(0.975, n - 1)) * se if n > 1 else math.nan
    unpaired = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / n) if n > 1 else math.nan
    return Paired(n, float(d.mean()), se, float(d.mean()) - half, float(d.mean()) + half, unpaired)


def expand(paths: list[str]) -> list[Path]:
    """Run folders, evaluation folders, or a sweep's folder (every run folder inside it), in the order given."""
    found = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise ConfigError(f"{path} does not exist: give run folders (runs/NAME), evaluation folders or a sweep")
        if (path / "config.yaml").is_file() or (path / "records.csv").is_file():
            found.append(path)
            continue
        inside = sorted(p for p in path.iterdir() if (p / "config.yaml").is_file()) if path.is_dir() else []
        if not inside:
            raise ConfigError(f"{path} is neither a run folder, an evaluation folder nor a folder of runs")
        found += inside
    if len({p.resolve() for p in found}) != len(found):
        raise ConfigError("a run is given twice: give each run once")
    return found


def evaluation_folder(run: Path, split: str) -> Path:
    """``RUN/eval/<best>-<split>`` (the run's own settings), or ``run`` itself when it is an evaluation folder."""
    if (run / "records.csv").is_file():
        return run
    best = (run / "checkpoints" / "best").read_text().strip() if (run / "checkpoints" / "best").is_file() else None
    folder = run / "eval" / f"{best}-{split}"
    if best is None or not (folder / "records.csv").is_file():
        others = sorted(p.name for p in (run / "eval").glob(f"*-{split}*") if (p / "records.csv").is_file())
        hint = f" (found {', '.join(others)}: pass one of those folders)" if others else ""
        raise ConfigError(
            f"{run} has no {split} evaluation of its best checkpoint: run `aef-hpc eval {run} eval.split={split}`{hint}"
        )
    return folder


def load(path: Path, split: str) -> Evaluated:
    """``path``: a run folder (its best checkpoint's evaluation of ``split``) or an evaluation folder."""
    folder = evaluation_folder(path, split)
    summary = json.loads((folder / "summary.json").read_text())
    if summary.get("split", split) != split:
        raise ConfigError(f"{folder} holds the {summary['split']} split, not {split}: pass --split {summary['split']}")
    run = folder.parents[1]  # RUN/eval/<checkpoint>-<split>
    cfg = from_yaml((run / "config.yaml").read_text(), where=str(run / "config.yaml"))
    with open(folder / "records.csv", newline="") as handle:
        bits = {row["key"]: float(row["bits_per_dim"]) for row in csv.DictReader(handle)}
    data = summary.get("data_fingerprint") or summary.get("settings", {}).get("data", "")
    name = run.name if folder != path else f"{run.name}:{folder.name}"
    return Evaluated(name, run, folder, cfg.model.name, cfg.model.latent_dim, bits, summary["levels"],
                     summary.get("image_shape"), data)  # fmt: skip


def check_comparable(a: Evaluated, b: Evaluated) -> list[str]:
    """The keys both evaluated; pairs on other images, pixel levels or image shapes are refused in one line."""
    why = None
    if a.levels != b.levels:
        why = f"{a.levels} vs {b.levels} pixel levels"
    elif a.image_shape and b.image_shape and a.image_shape != b.image_shape:
        why = f"images {a.image_shape} vs {b.image_shape}"
    elif a.data != b.data:
        why = "other images (their data fingerprints differ)"
    shared = sorted(set(a.bits) & set(b.bits))
    if why is None and not shared:
        why = "no image in common"
    if why:
        raise ConfigError(f"{a.name} and {b.name} cannot be paired: {why}; compare runs evaluated on the same data")
    return shared


@dataclass
class Row:
    """One line of the comparison: a run, or a config aggregated over its seeds."""

    kind: str
    name: str
    model: str
    latent_dim: int
    seeds: int
    images: int
    bits_per_dim: float
    spread: float
    """a run: the standard error over its images; a config: the standard deviation over its seeds' means"""
    versus: Paired | None = None
    members: list[Evaluated] = field(default_factory=list, repr=False)

    def as_dict(self, baseline: str) -> dict:
        v = self.versus
        return {
            "kind": self.kind, "name": self.name, "model": self.model, "latent_dim": self.latent_dim,
            "seeds": self.seeds, "images": self.images, "bits_per_dim": self.bits_per_dim, "spread": self.spread,
            "baseline": baseline if v else "", "paired_images": v.n if v else "",
            "diff_bits_per_dim": v.mean if v else "", "diff_se": v.se if v else "", "diff_ci95_low": v.low if v else "",
            "diff_ci95_high": v.high if v else "", "unpaired_se": v.unpaired_se if v else "",
        }  # fmt: skip


def _mean_over(members: list[Evaluated], keys: list[str]) -> np.ndarray:
    """Per image, the mean over ``members`` (the seeds of one config)."""
    return np.mean([[m.bits[k] for k in keys] for m in members], axis=0)


def compare(runs: list[Evaluated], baseline: Evaluated) -> list[Row]:
    """A row per run (paired against ``baseline``) and, for configs with several seeds, a row per config (its
    per-image mean over seeds, paired against the baseline config's)."""
    rows = []
    for run in runs:
        values = np.array(list(run.bits.values()))
        row = Row(
            "run",
            run.name,
            run.model,
            run.latent_dim,
            1,
            len(values),
            float(values.mean()),
            float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan,
            members=[run],
        )
        if run is not baseline:  # fmt: skip
            keys = check_comparable(run, baseline)
            row.versus = paired(_mean_over([run], keys), _mean_over([baseline], keys))
        rows.append(row)
    groups: dict[str, list[Evaluated]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    base_group = groups[baseline.group]
    for name, members in groups.items():
        if len(members) < 2:
            continue
        means = np.array([np.mean(list(m.bits.values())) for m in members])
        row = Row(
            "config",
            name,
            members[0].model,
            members[0].latent_dim,
            len(members),
            min(len(m.bits) for m in members),
            float(means.mean()),
            float(means.std(ddof=1)),
            members=members,
        )
        if members is not base_group:  # fmt: skip
            keys = sorted(set.intersection(*(set(check_comparable(m, b)) for m in members for b in base_group)))
            if not keys:
                raise ConfigError(f"the seeds of {name} and of {baseline.group} share no image: they cannot be paired")
            row.versus = paired(_mean_over(members, keys), _mean_over(base_group, keys))
        rows.append(row)
    return rows


def pick_baseline(runs: list[Evaluated], given: str | None) -> Evaluated:
    """The first run, or the one ``--baseline`` names (its name, run folder or evaluation folder)."""
    if given is None:
        return runs[0]
    wanted = Path(given).resolve()
    for run in runs:
        if given == run.name or wanted in (run.run.resolve(), run.folder.resolve()):
            return run
    raise ConfigError(f"--baseline {given}: not among the runs compared ({', '.join(r.name for r in runs)})")


def table(rows: list[Row], baseline: Evaluated) -> str:
    width = max(len(r.name) for r in rows)
    lines = [f"{'':<9}{'name':<{width}}  {'bits/dim':>9} {'±':>8}  {'images':>6}  paired difference vs {baseline.name}"]
    for r in rows:
        spread = f"{r.spread:.4f}" + ("s" if r.kind == "config" else " ")
        if r.versus is None:
            diff = "(baseline)" if any(m is baseline for m in r.members) else ""
        else:
            v = r.versus
            diff = (f"{v.mean:+.4f} ± {v.se:.4f} (95% [{v.low:+.4f}, {v.high:+.4f}], n={v.n}; "
                    f"unpaired ± {v.unpaired_se:.4f})")  # fmt: skip
        label = r.kind if r.kind == "run" else f"{r.seeds} seeds"
        lines.append(f"{label:<9}{r.name:<{width}}  {r.bits_per_dim:9.4f} {spread:>8}  {r.images:>6}  {diff}")
    lines.append("±: a run's standard error over its images; s: a config's standard deviation over its seeds")
    return "\n".join(lines)


def write_csv(rows: list[Row], baseline: str, path: Path) -> None:
    records = [r.as_dict(baseline) for r in rows]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    tmp.replace(path)
