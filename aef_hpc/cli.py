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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aef-hpc", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    train = commands.add_parser("train", help="train a model, then print its test bits/dim and write a sample grid")
    train.add_argument("--config", help="YAML file overriding the defaults of aef_hpc.config")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. model.name=vae train.steps=200")
    train.set_defaults(func=_train)
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
