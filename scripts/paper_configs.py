"""Write the AEF paper's experiment grid as runnable configs: ``configs/paper/*.yaml`` plus its README.

Run ``.venv/bin/python scripts/paper_configs.py`` (optionally with an output folder) after changing the grid;
``tests/test_configs.py`` checks that the committed files are exactly what this script writes. The settings come
from method.md §1.4 (proposal-std table), §1.5 (flow pairing) and §2.4–2.5 (training procedure, datasets).

A file holds only keys that differ from the schema defaults of ``aef_hpc/config.py``, plus the keys that name
the grid point (model.name, model.latent_dim, model.image_shape, model.bit_depth, data.path, run.name) and, for
AEF-linear with a hard-coded proposal std, model.proposal_std itself.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "configs" / "paper"
sys.path.insert(0, str(ROOT))

from aef_hpc.config import Config  # noqa: E402

# method.md §1.4, util.get_posterior_scale_aef_linear: dataset -> {latent dim: proposal std}.
PROPOSAL_STD = {
    "mnist": {2: 2.0, 4: 0.1, 8: 0.01, 16: 0.001, 32: 0.0005},
    "fashionmnist": {2: 2.0, 4: 0.1, 8: 0.01, 16: 0.005, 32: 0.0005},
    "kmnist": {2: 2.0, 4: 0.075, 8: 0.025, 16: 0.005, 32: 0.00075},
    "celebahq32": {64: 0.01, 128: 0.01, 256: 0.00025},
    "celebahq64": {64: 1.0, 128: 1.0, 256: 1.0, 512: 1.0},
    "imagenet32": {128: 0.0001, 256: 0.00009},
}

# §2.4: Adam, no schedule; lr 1e-3, batch 128, 100k iterations, validation every 500, early stopping at 1M
# (off), clip 200; CelebA-HQ64 (README command): lr 1e-4, batch 16, 1M iterations, early stopping 100k.
MNIST_TRAIN = {"lr": 1e-3, "batch_size": 128, "steps": 100_000, "val_every": 500, "patience": None, "grad_clip": 200.0}
CELEBA64_TRAIN = {
    "lr": 1e-4,
    "batch_size": 16,
    "steps": 1_000_000,
    "val_every": 500,
    "patience": 100_000,
    "grad_clip": 200.0,
}


@dataclasses.dataclass(frozen=True)
class Dataset:
    key: str
    """file prefix and shard folder data/<key>"""
    title: str
    image_shape: tuple[int, int, int]
    alpha: float
    architecture: str
    models: tuple[str, ...]
    latents: tuple[int, ...]
    train: dict
    shards: str
    """the command writing its shards"""


MNIST_MODELS = ("aef-center", "aef-corner", "aef-linear", "vae")
MNIST_LATENTS = (2, 4, 8, 16, 32)
DATASETS = (
    Dataset(
        "mnist",
        "MNIST",
        (1, 28, 28),
        1e-6,
        "small",
        MNIST_MODELS,
        MNIST_LATENTS,
        MNIST_TRAIN,
        "aef-hpc shards torchvision:MNIST:/data/mnist data/mnist",
    ),
    Dataset(
        "fashionmnist",
        "FashionMNIST",
        (1, 28, 28),
        1e-6,
        "small",
        MNIST_MODELS,
        MNIST_LATENTS,
        MNIST_TRAIN,
        "aef-hpc shards torchvision:FashionMNIST:/data/fashionmnist data/fashionmnist",
    ),
    Dataset(
        "kmnist",
        "KMNIST",
        (1, 28, 28),
        1e-6,
        "small",
        MNIST_MODELS,
        MNIST_LATENTS,
        MNIST_TRAIN,
        "aef-hpc shards torchvision:KMNIST:/data/kmnist data/kmnist",
    ),
    Dataset(
        "celebahq64",
        "CelebA-HQ 64x64",
        (3, 64, 64),
        0.05,
        "big",
        ("aef-linear", "vae"),
        (64, 128, 256, 512),
        CELEBA64_TRAIN,
        "aef-hpc shards ~/celebahq64 data/celebahq64 --encoding npy",
    ),
    Dataset(
        "celebahq32",
        "CelebA-HQ 32x32",
        (3, 32, 32),
        0.05,
        "big",
        ("aef-linear", "vae"),
        (64, 128, 256),
        MNIST_TRAIN,
        "aef-hpc shards ~/celebahq32 data/celebahq32 --encoding npy",
    ),
    Dataset(
        "imagenet32",
        "ImageNet 32x32",
        (3, 32, 32),
        0.05,
        "big",
        ("aef-linear", "vae"),
        (128, 256),
        MNIST_TRAIN,
        "aef-hpc shards ~/imagenet32 data/imagenet32 --encoding npy --val-fraction 0.01",
    ),
)

# §1.5/§2.4: AEFs use a MAF core flow and a MAF prior, the VAE an IAF posterior and a MAF prior.
FLOWS = {"vae": ("iaf", "maf")}
MODEL_TITLES = {"aef-center": "AEF-center", "aef-corner": "AEF-corner", "aef-linear": "AEF-linear", "vae": "VAE"}
EVAL = {"num_samples": 128, "repeats": 20}
ALWAYS = {
    ("model", "name"),
    ("model", "latent_dim"),
    ("model", "image_shape"),
    ("model", "bit_depth"),
    ("data", "path"),
    ("run", "name"),
}


def stem(ds: Dataset, model: str, latent: int) -> str:
    return f"{ds.key}-{model}-d{latent}"


def paper_settings(ds: Dataset, model: str, latent: int) -> dict:
    """Every setting the paper fixes for this grid point, as {section: {key: value}} (defaults included)."""
    posterior, prior = FLOWS.get(model, ("maf", "maf"))
    m = {
        "name": model,
        "architecture": ds.architecture,
        "latent_dim": latent,
        "decoder_variance": "independent",
        "prior_flow": prior,
        "posterior_flow": posterior,
        "alpha": ds.alpha,
        "flow_hidden": 256,
        "flow_layers": 4,
        "flow_blocks": 2,
        "image_shape": list(ds.image_shape),
        "bit_depth": 8,
    }
    ev = dict(EVAL)
    if model == "aef-linear":
        std = PROPOSAL_STD.get(ds.key, {}).get(latent)
        if std is not None:
            m["proposal_std"] = std
        ev["select_proposal_std"] = std is None
    return {
        "model": m,
        "data": {"path": f"data/{ds.key}"},
        "train": dict(ds.train),
        "eval": ev,
        "run": {"name": stem(ds, model, latent)},
    }


def _defaults() -> dict:
    cfg = Config()
    sections = [f.name for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))]
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in sections}


def written_keys(settings: dict) -> dict:
    """``settings`` without the schema defaults, except the keys naming the grid point."""
    defaults = _defaults()
    out = {}
    for section, values in settings.items():
        keep = {}
        for key, value in values.items():
            # a hard-coded proposal std is written even where it equals the default (CelebA-HQ64's 1.0)
            explicit = (section, key) in ALWAYS or (section, key) == ("model", "proposal_std")
            if explicit or value != defaults[section][key]:
                keep[key] = value
        if keep:
            out[section] = keep
    return out


def header(ds: Dataset, model: str, latent: int) -> str:
    posterior, prior = FLOWS.get(model, ("maf", "maf"))
    flows = f"{posterior.upper()} posterior + {prior.upper()} prior" if model == "vae" else "MAF core + MAF prior"
    shape = "x".join(map(str, ds.image_shape))
    return (
        f"# {MODEL_TITLES[model]} ({flows}, {ds.architecture} nets) on {ds.title} ({shape}), latent {latent}; "
        f"run: aef-hpc train --config configs/paper/{stem(ds, model, latent)}.yaml\n"
    )


def _scalar(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return yaml.safe_dump(value).removesuffix("\n...\n").strip()  # YAML's own spelling: null, false, 9.0e-05


def render(ds: Dataset, model: str, latent: int) -> str:
    lines = [header(ds, model, latent).rstrip("\n")]
    for section, values in written_keys(paper_settings(ds, model, latent)).items():
        lines += [f"{section}:"] + [f"  {key}: {_scalar(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def grid():
    for ds in DATASETS:
        for model in ds.models:
            for latent in ds.latents:
                yield ds, model, latent


def _fmt(value) -> str:
    return "off" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:g}"


def readme() -> str:
    lines = [
        "# The AEF paper's experiment grid",
        "",
        "Written by `scripts/paper_configs.py` (edit the script, not these files, then run "
        "`.venv/bin/python scripts/paper_configs.py`). Each file is one run of the grid of method.md §3 "
        "(R1–R5 and ImageNet's R8), named `<dataset>-<model>-d<latent>.yaml`:",
        "",
        "```",
        "aef-hpc train --config configs/paper/mnist-aef-linear-d2.yaml",
        "```",
        "",
        "| dataset | shape | arch | alpha | models | latent d | lr | batch | steps | patience |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ds in DATASETS:
        t = ds.train
        lines.append(
            f"| `{ds.key}` | {'x'.join(map(str, ds.image_shape))} | {ds.architecture} | {ds.alpha:g} | "
            f"{', '.join(ds.models)} | {', '.join(map(str, ds.latents))} | {t['lr']:g} | {t['batch_size']} | "
            f"{_fmt(t['steps'])} | {_fmt(t['patience'])} |"
        )
    lines += [
        "",
        "Common to all (method.md §1.5, §2.4): Adam without schedule, gradient clipping at 200, validation every "
        "500 steps keeping the best checkpoint, independent decoder variance, flows of 4 layers × 256 hidden × 2 "
        "blocks; AEFs use a MAF core flow and a MAF prior, the VAE an IAF posterior and a MAF prior. Test "
        "likelihoods average 20 importance-sampling estimates of K = 128 (AEF-linear, VAE). AEF-linear uses the "
        "proposal std the paper hard-coded (method.md §1.4's table) with `eval.select_proposal_std: false`.",
        "",
        "## Shards",
        "",
        "Every config reads `data.path: data/<dataset>`, written once by `aef-hpc shards` (run from the "
        "repository root, or pass `data.path=...`):",
        "",
        "```",
    ]
    lines += [ds.shards for ds in DATASETS]
    lines += [
        "```",
        "",
        "- torchvision sources are read from files already on disk (nothing is downloaded); their train split "
        "loses a seeded 10 % to validation (seed 3, as the paper).",
        "- CelebA-HQ: folders with `train/valid/test` sub-folders of `.npz` files (`image` key), as written by the "
        "reference code's `data/process_celebahq.py --dimension {32|64}`, so the official 24,183 / 2,993 / 2,824 "
        "partition is kept (method.md §2.5).",
        "- ImageNet 32x32: `train/` and `test/` folders of `.npz` files; the paper's validation split is 1 % of "
        "train, hence `--val-fraction 0.01`.",
        "",
        "## Caveats (see /work/shared/spec/method.md)",
        "",
        "- The paper's AEF-linear NLLs lack the importance sampler's `- log K` (§1.4, §5 item 1): they are lower "
        "than these runs' by log 128 = 4.852 nats per image. These runs subtract it.",
        "- FID needs `eval.fid_weights=/path/to/pt_inception-2015-12-05.pth` on the command line (§4.2).",
        "- The paper's tables average several runs: repeat a config with `train.seed=N run.name=<stem>-sN`.",
        "- Not expressible in the config: the reference code's horizontal flips of CelebA-HQ 32x32 (train and "
        "validation, §2.4) and its validation at step 0; the phase-1 MNIST flow settings are the notebook's "
        "([PAPER?] in §2.4).",
        "",
    ]
    return "\n".join(lines)


def generate(out_dir: Path | str = OUT_DIR) -> dict[str, str]:
    """Write every config and README.md into ``out_dir``; return {file name: text}."""
    files = {f"{stem(*point)}.yaml": render(*point) for point in grid()}
    files["README.md"] = readme()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out_dir / name).write_text(text)
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default=str(OUT_DIR), help="default: configs/paper")
    args = parser.parse_args(argv)
    files = generate(args.out_dir)
    print(f"wrote {len(files)} files to {args.out_dir}")
    stale = sorted(p.name for p in Path(args.out_dir).glob("*.yaml") if p.name not in files)
    if stale:
        print(f"not part of the grid any more (delete them): {', '.join(stale)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
