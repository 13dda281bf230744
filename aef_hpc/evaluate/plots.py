"""PNG figures (matplotlib, headless): training curves, and the paper's 2-D latent plots (method.md §3, R9)."""

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .grids import save_grid  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def training_curves(rows: list[dict], objective: str, num_dims: int, levels: int, path: Path) -> Path:
    """The objective (train and validation) against step, and bits/dim where the objective is a likelihood
    (``nll``) or a bound on it (``neg_elbo``, ``neg_iwae_bound``)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for r in rows:
        if r["metric"] == objective:
            steps, values = series.setdefault(r["split"], ([], []))
            steps.append(int(r["step"]))
            values.append(float(r["value"]))
    likelihood = objective in ("nll", "neg_elbo", "neg_iwae_bound")
    fig, axes = plt.subplots(1, 2 if likelihood else 1, figsize=(11 if likelihood else 6, 4), squeeze=False)
    for split, (steps, values) in series.items():
        axes[0, 0].plot(steps, values, label=split, marker="o" if split == "val" else None)
        if likelihood:
            bpd = [v / (num_dims * math.log(2)) + math.log2(levels) for v in values]
            axes[0, 1].plot(steps, bpd, label=split, marker="o" if split == "val" else None)
    axes[0, 0].set(xlabel="step", ylabel=f"{objective} (nats/image)", title="objective")
    if likelihood:
        axes[0, 1].set(xlabel="step", ylabel="bits/dim", title="bits per dimension")
    for ax in axes[0]:
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)


def latent_scatter(latents: torch.Tensor, path: Path, labels: torch.Tensor | None = None) -> Path:
    """Test encodings of a 2-D latent space, axes ±3.5 as in the paper; coloured by class (with a legend) when
    ``labels`` are given."""
    fig, ax = plt.subplots(figsize=(5.8 if labels is not None else 5, 5))
    z = latents.detach().float().cpu()
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=4, alpha=0.7)
    else:
        colours = plt.get_cmap("tab10" if int(labels.max()) < 10 else "tab20")
        for i, cls in enumerate(sorted(set(labels.tolist()))):
            chosen = labels == cls
            ax.scatter(z[chosen, 0], z[chosen, 1], s=4, alpha=0.7, color=colours(i % colours.N), label=str(cls))
        ax.legend(title="class", markerscale=3, fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set(xlim=(-3.5, 3.5), ylim=(-3.5, 3.5), xlabel="z1", ylabel="z2", title="test encodings")
    return _save(fig, path)


def latent_grid(model, path: Path, n: int = 20) -> Path:
    """Decode a ``n x n`` grid at ``z = Phi^-1(linspace(0.1, 0.9))`` in both latent dims (the paper's 20 x 20)."""
    ticks = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.1, 0.9, n))
    param = next(model.parameters())
    rows = []
    with torch.no_grad():
        for z2 in ticks.flip(0):
            z = torch.stack([ticks, z2.expand(n)], dim=1).to(param)
            rows.append(model.decode(z))
    return save_grid(rows, path, scale=2)
