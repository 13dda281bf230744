"""``compare.png``: test bits/dim against latent size, one line per model, with intervals (matplotlib, headless)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .compare import Row  # noqa: E402


def points(rows: list[Row]) -> dict[str, list[tuple[int, float, float]]]:
    """Per model, ``(latent_dim, bits/dim, half-interval)``: a config's mean over seeds ± their standard deviation;
    a config with one seed, its run ± 1.96 standard errors. Two configs of one model and latent size (another
    dataset, another learning rate) get a line each, named by config."""
    grouped = {m.group_key for r in rows if r.kind == "config" for m in r.members}
    chosen = [r for r in rows if r.kind == "config" or r.members[0].group_key not in grouped]
    taken: dict[tuple[str, int], int] = {}
    for r in chosen:
        taken[(r.model, r.latent_dim)] = taken.get((r.model, r.latent_dim), 0) + 1
    series: dict[str, list[tuple[int, float, float]]] = {}
    for r in chosen:
        label = r.model if taken[(r.model, r.latent_dim)] == 1 else r.members[0].group
        half = r.spread if r.kind == "config" else 1.96 * r.spread
        series.setdefault(label, []).append((r.latent_dim, r.bits_per_dim, half))
    return {label: sorted(values) for label, values in series.items()}


def compare_figure(rows: list[Row], path: Path, split: str) -> Path:
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, values in points(rows).items():
        latent, bits, half = zip(*values, strict=True)
        axes.errorbar(latent, bits, yerr=half, marker="o", capsize=3, label=label)
    axes.set_xscale("log", base=2)
    latents = sorted({latent for values in points(rows).values() for latent, _, _ in values})
    axes.set_xticks(latents, [str(latent) for latent in latents])
    axes.minorticks_off()
    axes.set_xlabel("latent dimension")
    axes.set_ylabel(f"{split} bits/dim (lower is better)")
    axes.set_title("bars: ± std over seeds (one seed: 95 % interval)", fontsize=9)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
