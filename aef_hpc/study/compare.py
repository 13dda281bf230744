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
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from ..config import flat_items, from_yaml
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
    setting: str = ""
    """a digest of the run's config without its seed and location (``_setting``)"""

    @property
    def group(self) -> str:
        """The config this run is a seed of (``<stem>-s<seed>`` -> ``<stem>``)."""
        return SEED_SUFFIX.sub("", self.run.name)

    @property
    def group_key(self) -> tuple:
        """Seeds of one config: the same folder of runs, the same stem and the same settings but the seed."""
        return (str(self.run.parent.resolve()), self.group, self.setting)


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


def expand(paths: list[str], split: str) -> tuple[list[Path], list[str]]:
    """Run folders, evaluation folders, or a sweep's folder (every run inside it that has an evaluation of
    ``split``; the others are named in the returned notes), in the order given."""
    found, notes = [], []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise ConfigError(f"{path} does not exist: give run folders (runs/NAME), evaluation folders or a sweep")
        if (path / "config.yaml").is_file() or (path / "summary.json").is_file():
            found.append(path)
            continue
        inside = [p for p in path.iterdir() if (p / "config.yaml").is_file()] if path.is_dir() else []
        inside.sort(key=_natural)
        if not inside:
            raise ConfigError(f"{path} is neither a run folder, an evaluation folder nor a folder of runs")
        for run in inside:
            try:
                evaluation_folder(run, split)
                found.append(run)
            except ConfigError:
                notes.append(f"{run.name}: no {split} evaluation yet (unfinished or failed): left out")
    if len({p.resolve() for p in found}) != len(found):
        raise ConfigError("a run is given twice: give each run once")
    if not found:
        raise ConfigError(f"none of {', '.join(paths)} holds a run with a {split} evaluation")
    return found, notes


def _natural(path: Path) -> list:
    """``d2`` before ``d8`` before ``d32``: numbers in a name sort by value."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def evaluation_folder(run: Path, split: str) -> Path:
    """An evaluation folder as it is; for a run folder, its final test's (``finished.json``) when ``split`` is the
    one it tested, else ``RUN/eval/<best>-<split>`` (an evaluation of the best checkpoint with the run's settings)."""
    if (run / "summary.json").is_file():
        return run
    finished = _read_json(run / "finished.json") if (run / "finished.json").is_file() else {}
    folder = Path(finished.get("evaluation", "/nonexistent"))
    if not folder.name.endswith(f"-{split}") or not (folder / "summary.json").is_file():
        pointer = run / "checkpoints" / "best"
        best = pointer.read_text().strip() if pointer.is_file() else None
        folder = run / "eval" / f"{best}-{split}"
    if not (folder / "summary.json").is_file():
        others = sorted(p.name for p in (run / "eval").glob(f"*-{split}*") if (p / "summary.json").is_file())
        hint = f" (found {', '.join(others)}: pass one of those folders)" if others else ""
        raise ConfigError(
            f"{run} has no {split} evaluation of its best checkpoint: run `aef-hpc eval {run} eval.split={split}`{hint}"
        )
    return folder


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}): evaluate the run again with aef-hpc eval") from None


def load(path: Path, split: str) -> Evaluated:
    """``path``: a run folder (its best checkpoint's evaluation of ``split``) or an evaluation folder
    (``RUN/eval/<checkpoint>-<split>...``)."""
    folder = evaluation_folder(path, split)
    summary = _read_json(folder / "summary.json")
    if summary.get("split", split) != split:
        raise ConfigError(f"{folder} holds the {summary['split']} split, not {split}: pass --split {summary['split']}")
    run = folder.parents[1]  # RUN/eval/<checkpoint>-<split>
    if folder.parent.name != "eval" or not (run / "config.yaml").is_file():
        raise ConfigError(f"{folder} is not inside a run folder (RUN/eval/...): its model is unknown")
    cfg = from_yaml((run / "config.yaml").read_text(), where=str(run / "config.yaml"))
    try:
        with open(folder / "records.csv", newline="") as handle:
            bits = {row["key"]: float(row["bits_per_dim"]) for row in csv.DictReader(handle)}
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"{folder / 'records.csv'} cannot be read ({exc}): evaluate the run again") from None
    data = summary.get("data_fingerprint") or summary.get("settings", {}).get("data", "")
    name = run.name if folder != path else f"{run.name}:{folder.name}"
    setting = _setting(cfg)
    return Evaluated(name, run, folder, cfg.model.name, cfg.model.latent_dim, bits, summary.get("levels"),
                     summary.get("image_shape"), data, setting)  # fmt: skip


def _setting(cfg) -> str:
    """What a run was trained with, except its seed and where it lies: runs of one config with other seeds share it."""
    kept = {k: v for k, v in flat_items(cfg).items() if k != "train.seed" and not k.startswith("run.")}
    return hashlib.sha256(repr(sorted(kept.items())).encode()).hexdigest()


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
    groups: dict[tuple, list[Evaluated]] = {}
    for run in runs:
        groups.setdefault(run.group_key, []).append(run)
    base_group = groups[baseline.group_key]
    stems = [key[1] for key, members in groups.items() if len(members) > 1]
    for key, members in groups.items():
        if len(members) < 2:
            continue
        name = key[1] if stems.count(key[1]) == 1 else f"{Path(key[0]).name}/{key[1]}"
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
