"""``aef-hpc sample``: a PNG grid of samples, reconstructions of test images and, for 2-D latents, the paper's
latent plots; all under ``RUN/samples/``, named for the checkpoint and every setting that changes the picture (n,
temperature, seed, deviations), so a second call with other settings never replaces the grids written during
training."""

import math
from pathlib import Path

import torch

from ..data import dequantize
from ..progress import Progress
from .grids import save_grid
from .likelihood import first_images, limited
from .plots import latent_grid, latent_scatter
from .restore import Trained


@torch.no_grad()
def write_samples(
    trained: Trained, data, n: int, temperature: float, deviations: bool = False, seed: int = 0
) -> list[Path]:
    """Samples ``decode(T * N(0, I))`` (``deviations``: plus ``T * N(0, I)`` decoder deviations), reconstructions
    ``decode(encode(x))`` of 16 test images and, when ``latent_dim == 2``, the latent scatter and 20 x 20 grid."""
    figures = 4 if trained.model.latent_dim == 2 else 2
    with Progress(figures, "sample", "figure", every=trained.cfg.train.progress_every) as bar:
        return _write_figures(trained, data, n, temperature, deviations, seed, bar)


def _write_figures(trained: Trained, data, n: int, temperature: float, deviations: bool, seed: int, bar) -> list[Path]:
    model, device, e = trained.model, trained.device, trained.cfg.eval
    tag = trained.checkpoint.path.name
    out = trained.checkpoint.run_dir / "samples"
    gen = torch.Generator(device=device).manual_seed(seed)
    samples = model.sample(n, temperature, gen, deviations=deviations)
    per_row = max(1, round(math.sqrt(n)))
    written = [
        save_grid(
            list(samples.split(per_row)),
            out / f"samples-{tag}-n{n}-T{temperature:g}-seed{seed}{'-deviations' if deviations else ''}.png",
        )
    ]
    bar.update()
    originals = dequantize(
        first_images(data.eval_batches("test", e.batch_size), 16), data.levels, torch.Generator().manual_seed(seed)
    ).to(device)
    pairs = [originals, model.decode(model.encode(originals))]
    path = out / f"reconstructions-{tag}-seed{seed}.png"
    written.append(save_grid(pairs, path, labels=["original", "reconstruction"]))
    bar.update()
    if model.latent_dim == 2:
        gen = torch.Generator().manual_seed(seed)
        keys, codes = [], []
        for batch_keys, images in limited(data.eval_batches("test", e.batch_size), 4096):
            keys += batch_keys
            codes.append(model.encode(dequantize(images, data.levels, gen).to(device)))
        labels = data.labels_of("test", keys)  # None: no classes to colour by
        path = out / f"latent-scatter-{tag}-seed{seed}.png"
        written.append(latent_scatter(torch.cat(codes), path, None if labels is None else torch.tensor(labels)))
        bar.update()
        written.append(latent_grid(model, out / f"latent-grid-{tag}.png"))
        bar.update()
    return written
