"""The ``aef-hpc`` command line.

``aef-hpc train [--config FILE] [key=value ...]`` trains and evaluates one model; with no arguments it trains
``aef-center`` on the embedded digits. Errors from bad input print one line and exit with status 2.
"""

import argparse
import sys

from .errors import AEFError


def _train(args) -> int:
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, progress=not args.no_progress)
    print(f"run folder:     {result.run_dir}")
    print(f"best val {result.loss_name}: {result.best_val_loss:.3f} nats/image")
    print(f"test NLL:       {result.test_nll:.3f} nats/image")
    print(f"test bits/dim:  {result.test_bpd:.4f}")
    print(f"sample grid:    {result.grid}")
    return 0


def _shards(args) -> int:
    from .data import write_shards

    manifest = write_shards(
        args.source,
        args.out_dir,
        encoding=args.encoding,
        resolution=args.resolution,
        samples_per_shard=args.samples_per_shard,
        shard_size_mb=args.shard_size_mb,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        progress=not args.no_progress,
    )
    counts = ", ".join(f"{k} {manifest.count(k)} in {len(v)} shards" for k, v in manifest.splits.items())
    print(
        f"wrote {args.out_dir}: {counts}; images {manifest.image_shape}, {manifest.levels} levels, {manifest.encoding}"
    )
    return 0


def _bench(args) -> int:
    if args.what == "kernels":
        from .kernels import bench as kernel_bench

        out = args.out or "bench/kernels.csv"
        smoke = dict(
            sizes={"784": 784},
            batch=4,
            providers=("triton", "eager"),
            warmup=1,
            repeats=2,
            copy_mb=8,
            model=dict(batch=2, latent=8, warmup=0, repeats=1, image=(3, 8, 8)),
        )
        plot = out.replace(".csv", ".png")
        rows = kernel_bench.run(out, plot, cpu_smoke=args.cpu_smoke, **(smoke if args.cpu_smoke else {}))
        for r in rows:
            print(
                f"{r['op']:26s} {r['provider']:8s} {r['mode']:8s} {r['size']:10s} {r['ms']:>10.4f} ms"
                f"  {r['gbps']:>8} GB/s  {r['frac_copy_bw']:>6} of copy  peak {r['peak_mb']} MB"
            )
        print(f"wrote {out} and {out.replace('.csv', '.png')}")
        return 0
    from .bench import data

    out = args.out or "bench/data.csv"
    rows = data.run(out, images=args.images)
    width = max(len(r["loader"]) for r in rows)
    for r in rows:
        print(
            f"{r['shape']:8s} {r['loader']:{width}s} workers={r['workers']}  {r['images_per_s']:>10.1f} images/s"
            f"  first batch {r['first_batch_s']:.2f} s"
        )
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aef-hpc",
        description="Train and evaluate AutoEncoders within Flows and VAE baselines; write data shards; benchmark.",
        epilog="e.g. aef-hpc train model.name=vae train.steps=200; every key is in aef_hpc/config.py",
    )
    commands = parser.add_subparsers(dest="command")
    train = commands.add_parser("train", help="train a model, then print its test bits/dim and write a sample grid")
    train.add_argument("--config", help="YAML file overriding the defaults of aef_hpc.config")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. model.name=vae train.steps=200")
    train.set_defaults(func=_train)

    shards = commands.add_parser("shards", help="write webdataset tar shards and manifest.json from a source")
    shards.add_argument(
        "source", help="digits | a folder of images or .npz files | a .npy array | torchvision:NAME:ROOT"
    )
    shards.add_argument("out_dir", help="new folder for the shards and manifest.json")
    shards.add_argument("--encoding", choices=("png", "npy"), default="png")
    shards.add_argument("--resolution", type=int, help="resize every image to R×R (bicubic)")
    shards.add_argument("--samples-per-shard", type=int, default=1000)
    shards.add_argument("--shard-size-mb", type=float, help="start a new shard past this size instead")
    shards.add_argument("--val-fraction", type=float, default=0.1)
    shards.add_argument("--test-fraction", type=float, default=0.2)
    shards.add_argument("--seed", type=int, default=3, help="seed of the random split (sources without their own)")
    shards.add_argument("--no-progress", action="store_true")
    shards.set_defaults(func=_shards, overrides=[])

    bench = commands.add_parser("bench", help="benchmarks that write CSV (see docs/benchmarks.md)")
    bench.add_argument(
        "what",
        choices=("data", "kernels"),
        help="data: shard streaming vs one file per image; kernels: fused ops vs eager vs torch.compile",
    )
    bench.add_argument("--out", help="CSV file to write (default bench/<what>.csv; kernels also writes a .png plot)")
    bench.add_argument("--images", type=int, default=4096, help="data: images per shape")
    bench.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="kernels: a tiny run on the CPU (interpreter) that checks the benchmark itself, not speed",
    )
    bench.set_defaults(func=_bench, overrides=[])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv or ["train"])
    if args.command is None:
        parser.print_help()
        return 2
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *rest]  # key=value after a flag
    try:
        return args.func(args)
    except AEFError as exc:
        print(f"aef-hpc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
