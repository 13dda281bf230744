"""The ``aef-hpc`` command line.

``aef-hpc train [--config FILE] [key=value ...]`` trains and evaluates one model (``aef-center`` on the embedded
digits by default); ``aef-hpc`` alone prints the help. Errors from bad input print one line and exit with status 2.
"""

import argparse
import importlib
import math
import os
import re
import shlex
import sys
import warnings
from pathlib import Path

from .errors import AEFError, AEFWarning, ConfigError, out_of_memory
from .signals import sigterm_as_interrupt


def _train(args) -> int:
    from .config import load_config
    from .engine import find_resumable
    from .evaluate import checkpoint_config
    from .train import start_over_config, stopped_before_first_checkpoint, train

    checkpoint, start_over = None, False
    if args.resume:
        if args.config:
            raise ConfigError(
                "--config cannot be combined with --resume: the run's own config is used; "
                "change single keys with key=value (e.g. train.steps=4000)"
            )
        if stopped_before_first_checkpoint(args.resume):  # nothing to continue: the same run again, same folder
            cfg, start_over = start_over_config(args.resume, args.overrides), True
        else:
            checkpoint = find_resumable(args.resume)
            cfg = checkpoint_config(checkpoint, args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    if args.print_config:  # also what a launcher checks once before it starts the ranks
        from .config import to_yaml
        from .train import check_launch

        check_launch(cfg, checkpoint)
        print(to_yaml(cfg), end="")
        return 0
    result = train(cfg, progress=not args.no_progress, resume=checkpoint, start_over=start_over)
    if result is None:  # ranks other than 0: rank 0 reports
        return 0
    _print_summary(result.summary, result.eval_dir)
    print(f"run folder:     {result.run_dir}")
    print(f"best val {result.loss_name}: {result.best_val_loss:.3f} nats/image (step {result.best_step})")
    for figure in result.figures:
        print(f"figure:         {figure}")
    return 0


def _print_summary(summary: dict, folder) -> None:
    se = summary["bits_per_dim_se"]
    print(
        f"{summary['split']} NLL:       {summary['nll_nats']:.3f} nats/image ({summary['estimator']}, "
        f"{summary['count']} images)"
    )
    print(f"{summary['split']} bits/dim:  {summary['bits_per_dim']:.4f} ± {se:.4f} (standard error)")
    if "ess_min" in summary:
        print(
            f"IS effective sample size: min {summary['ess_min']:.1f}, median {summary['ess_median']:.1f} "
            f"of K={summary['num_samples']}"
        )
    for key in ("proposal_std", "fid", "ife", "denoise_mse"):
        if key in summary:
            print(f"{key}: {summary[key]:.6g}")
    print(f"records:        {folder}")


def _open_trained(path, overrides, device=None):
    from .data import open_data
    from .evaluate import check_same_data, restore

    trained = restore(path, overrides, device=device)
    data = open_data(trained.cfg.data)
    check_same_data(trained.checkpoint, data)
    return trained, data


def _eval(args) -> int:
    import torch

    from .evaluate import check_fid_weights, evaluate, resolve_device
    from .evaluate.evaluation import check_world
    from .kernels import use_kernels
    from .process_group import discover, init_distributed, leave_distributed

    # restored on the CPU: each rank then moves it to its own device (never every rank to cuda:0 first)
    trained, data = _open_trained(args.path, args.overrides, device=torch.device("cpu"))
    check_fid_weights(trained.cfg.eval.fid_weights)
    info = discover()  # started by torchrun, mpiexec or srun: every rank evaluates its share of the shards
    check_world(trained.cfg, info.world_size)
    try:
        trained.device = init_distributed(info, resolve_device(trained.cfg.train.device))
        trained.model.to(trained.device)
        with use_kernels(trained.cfg.kernels):
            summary, folder = evaluate(trained, data)
    finally:
        leave_distributed()
    if info.rank == 0:
        print(f"checkpoint:     {trained.checkpoint.path}{' (EMA weights)' if trained.ema else ''}")
        _print_summary(summary, folder)
    return 0


def _boolean(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError(value)
    return value.lower() == "true"


SAMPLE_OPTIONS = {
    "n": (int, 64, "an int"),
    "temperature": (float, 1.0, "a float"),
    "deviations": (_boolean, False, "true or false"),
    "seed": (int, 0, "an int"),
}


def _sample_options(items: list[str]) -> tuple[dict, list[str]]:
    """``n=64 temperature=0.85 deviations=true seed=0``; other ``key=value`` items are config overrides."""
    options, overrides = {k: default for k, (_, default, _) in SAMPLE_OPTIONS.items()}, []
    for item in items:
        key, _, value = item.partition("=")
        if key not in SAMPLE_OPTIONS:
            overrides.append(item)
            continue
        parse, _, kind = SAMPLE_OPTIONS[key]
        try:
            options[key] = parse(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r} is not {kind}") from None
    if not 1 <= options["n"] <= 1_000_000 or not 0 < options["temperature"] < math.inf:
        raise ConfigError(
            f"n={options['n']} must be 1 to 1,000,000 and temperature={options['temperature']} positive and finite"
        )
    if not 0 <= options["seed"] < 2**63:
        raise ConfigError(f"seed={options['seed']} must be in [0, 2**63)")
    return options, overrides


def _sample(args) -> int:
    from .evaluate import write_samples
    from .kernels import use_kernels

    options, overrides = _sample_options(args.overrides)
    trained, data = _open_trained(args.path, overrides)
    with use_kernels(trained.cfg.kernels):
        for path in write_samples(trained, data, **options):
            print(f"wrote {path}")
    return 0


def _export(args) -> int:
    from .evaluate.export import export

    print(f"wrote {export(args.path, args.out)}")
    return 0


def _info(args) -> int:
    from .engine.info import describe

    for key, value in describe().items():
        print(f"{key + ':':<18}{value}")
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
        shuffle=not args.no_shuffle,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    counts = ", ".join(f"{k} {manifest.count(k)} in {len(v)} shards" for k, v in manifest.splits.items())
    print(
        f"wrote {args.out_dir}: {counts}; images {manifest.image_shape}, {manifest.levels} levels, {manifest.encoding}"
    )
    return 0


def _split_configs(items: list[str]) -> tuple[list[str], list[str]]:
    """Positional items of ``sweep``: ``key=value`` overrides (a dotted key before ``=``), else config files."""
    overrides = [i for i in items if re.match(r"^[A-Za-z_][\w.]*=", i) and not Path(i).is_file()]
    return [i for i in items if i not in overrides], overrides


def _sweep(args) -> int:
    from .study import sweep
    from .writable import check_writable_folder

    configs, overrides = _split_configs(args.overrides)
    if not configs:
        raise ConfigError("sweep: give at least one config file (e.g. configs/paper/mnist-vae-d2.yaml)")
    sweep.check_parallel(args.parallel, args.nproc)
    try:
        sbatch_args = shlex.split(args.sbatch_args or "")
    except ValueError as exc:
        raise ConfigError(f"--sbatch-args {args.sbatch_args!r}: {exc} (quote as in a shell)") from None
    runs = sweep.plan(configs, sweep.parse_seeds(args.seeds), overrides, args.out)
    out = Path(args.out).resolve()
    print(sweep.describe(runs, overrides))
    if args.executor == "slurm" and sweep.to_run(runs):
        print("sbatch: " + shlex.join(sweep.sbatch_command(runs, out, sbatch_args)))
    if args.dry_run:
        return 0
    if not sweep.to_run(runs):
        print(f"nothing to run: {sweep.summary_line(runs, [])}")
        return 0
    check_writable_folder(out, "--out")
    if args.executor == "slurm":
        tasks = len(sweep.to_run(runs))
        job = sweep.submit_array(runs, overrides, out, sbatch_args)
        print(f"submitted job array {job} ({tasks} tasks); logs: {out / 'logs'}/slurm-{job}_<index>.out")
        print(f"the same command again skips finished and queued runs; then: aef-hpc compare {out}")
        return 0
    failed = sweep.run_local(runs, overrides, args.parallel, args.nproc)
    print(f"sweep {out}: {sweep.summary_line(runs, failed)}; compare them: aef-hpc compare {out}")
    return 1 if failed else 0


def _compare(args) -> int:
    from .study import compare
    from .writable import check_writable_file

    if args.out:
        check_writable_file(args.out, "--out")
        if not args.out.endswith(".csv"):
            raise ConfigError(f"--out {args.out}: name a .csv file (the figure goes beside it as .png)")
    paths, notes = compare.expand(args.runs, args.split)
    for note in notes:
        print(f"aef-hpc: note: {note}", file=sys.stderr)
    runs = [compare.load(path, args.split) for path in paths]
    baseline = compare.pick_baseline(runs, args.baseline)
    rows = compare.compare(runs, baseline)
    print(compare.table(rows, baseline))
    if args.out:
        from .study.figure import compare_figure

        out = Path(args.out)
        compare.write_csv(rows, baseline.name, out)
        print(f"wrote {out} and {compare_figure(rows, out.with_suffix('.png'), args.split)}")
    return 0


def _bench(args) -> int:
    from .writable import check_writable_file

    if args.vs_limit and args.what != "eval":
        raise ConfigError(
            f"--vs-limit is a case of `bench eval`, not of `bench {args.what}`: aef-hpc bench eval --vs-limit"
        )
    if args.big and args.what != "scale":
        raise ConfigError(f"--big is a case of `bench scale`, not of `bench {args.what}`: aef-hpc bench scale --big")
    if (args.width is not None or args.memory_cap is not None) and not args.big:
        raise ConfigError("--width and --memory-cap are options of `aef-hpc bench scale --big`")
    if args.width is not None and args.width < 1:
        raise ConfigError(f"--width={args.width}: the big nets' channel width must be at least 1")
    if args.memory_cap is not None:
        import resource

        hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
        if not 0 < args.memory_cap < math.inf:
            raise ConfigError(f"--memory-cap={args.memory_cap}: give the per-process cap in GiB, a number > 0")
        if hard != resource.RLIM_INFINITY and args.memory_cap * 2**30 > hard:
            raise ConfigError(
                f"--memory-cap={args.memory_cap}: above this shell's own hard limit of {hard / 2**30:.2f} GiB "
                "(ulimit -d); give a smaller cap"
            )
    for flag in ("traffic", "host"):
        if getattr(args, flag) and args.what != "kernels":
            raise ConfigError(f"--{flag} is an option of `bench kernels`, not of `bench {args.what}`")
    if args.traffic and args.host:
        raise ConfigError("--traffic and --host are two tables: give one of them")
    suffix = "-vs-limit" if args.vs_limit else "-big" if args.big else "-host" if args.host else ""
    out = args.out or f"bench/{args.what}{suffix}.csv"
    if not args.traffic:
        check_writable_file(out, "--out")  # before the benchmark runs, not after it
    if args.what == "kernels":
        if (args.cpu_smoke or args.traffic or args.host) and os.environ.get("TRITON_INTERPRET") != "1":
            env = {**os.environ, "TRITON_INTERPRET": "1"}  # triton reads it at import: start anew
            os.execve(sys.executable, [sys.executable, "-m", "aef_hpc.cli", *args.argv], env)
        if args.traffic:
            from .bench.traffic import markdown, traffic_table

            print(markdown(traffic_table()))
            return 0
        if args.host:
            from .bench import host
            from .bench.report import write_csv

            rows = host.host_table()
            write_csv(rows, out)
            print(f"{host.markdown(rows)}\nwrote {out}")
            return 0
        from .bench import kernels as kernel_bench

        plot = str(Path(out).with_suffix(".png"))
        smoke = kernel_bench.SMOKE if args.cpu_smoke else {}
        print(kernel_bench.table(kernel_bench.run(out, plot, cpu_smoke=args.cpu_smoke, **smoke)))
        print(f"wrote {out} and {plot}")
        return 0
    if args.big:
        from .bench import big

        width = args.width or (big.SMOKE_WIDTH if args.cpu_smoke else big.WIDTH)
        cap = args.memory_cap or (None if args.cpu_smoke else big.CAP_GIB)
        print(big.table(big.run(out, width, cap)))
        print(f"wrote {out}; run folders and logs in {Path(out).with_suffix('.d')}")
        return 0
    if args.what in ("eval", "scale", "train"):  # each module: run(out) -> rows, table(rows) -> text
        module = "limit" if args.vs_limit else args.what
        bench = importlib.import_module(f".bench.{module}", __package__)
        print(bench.table(bench.run(out)))
        print(f"wrote {out}")
        return 0
    from .bench import data

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
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # DeepSpeed's launcher
    commands = parser.add_subparsers(dest="command")
    train = commands.add_parser(
        "train",
        help="train a model, then print its test bits/dim and write a sample grid",
        description="Train a model into a new run folder (run.out_dir/run.name), checkpointing at every validation; "
        "then evaluate its best checkpoint on the test split. --resume RUN_DIR continues a run from its newest "
        "complete checkpoint, bit-identical to an uninterrupted run.",
    )
    train.add_argument("--config", help="YAML file overriding the defaults of aef_hpc.config")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue this run folder from its newest checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration (YAML) and train nothing; checks the keys, the DeepSpeed preset, the "
        "engine against the process count and the device",
    )
    train.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. model.name=vae train.steps=200")
    train.set_defaults(func=_train)

    evaluate = commands.add_parser(
        "eval",
        help="evaluate a trained model's likelihood (and FID) on a split",
        description="Evaluate a run's best checkpoint (or the checkpoint folder given): exact NLL for partition "
        "AEFs, importance sampling (eval.num_samples x eval.repeats) otherwise; bits/dim mean ± standard error, "
        "per-image records and summary under RUN/eval/<checkpoint>-<split>/ (other settings than the run's final "
        "test: a folder of their own beside it, e.g. -K1024x20).",
    )
    evaluate.add_argument("path", metavar="RUN_DIR|CHECKPOINT", help="runs/NAME or runs/NAME/checkpoints/step-N")
    evaluate.add_argument(
        "overrides", nargs="*", metavar="key=value", help="eval.* and data.* keys, e.g. eval.num_samples=1024"
    )
    evaluate.set_defaults(func=_eval)

    sample = commands.add_parser(
        "sample",
        help="write sample grids, reconstructions and latent plots of a trained model",
        description="Write RUN/samples/*.png: samples at a temperature (deviations=true adds sampled decoder "
        "deviations), reconstructions of test images and, for 2-D latents, the test encodings and a 20x20 "
        "decoded grid.",
    )
    sample.add_argument("path", metavar="RUN_DIR|CHECKPOINT", help="runs/NAME or runs/NAME/checkpoints/step-N")
    sample.add_argument(
        "overrides", nargs="*", metavar="key=value", help="n=64 temperature=0.85 deviations=true seed=0, config keys"
    )
    sample.set_defaults(func=_sample)

    export = commands.add_parser(
        "export",
        help="write any checkpoint (DeepSpeed ZeRO shards too) as one safetensors file plus its config",
        description="Consolidate a checkpoint (a run folder: its best) into OUT/step-N/model.safetensors with "
        "config.yaml and meta.json (default OUT: RUN/export); aef-hpc eval and sample open that folder in one "
        "process.",
    )
    export.add_argument("path", metavar="RUN_DIR|CHECKPOINT", help="runs/NAME or runs/NAME/checkpoints/step-N")
    export.add_argument("--out", help="folder that receives step-N/ (default RUN_DIR/export)")
    export.set_defaults(func=_export, overrides=None)

    info = commands.add_parser(
        "info", help="print the ranks, devices, backend and versions this process finds (run it under a launcher)"
    )
    info.set_defaults(func=_info, overrides=None)

    shards = commands.add_parser("shards", help="write webdataset tar shards and manifest.json from a source")
    shards.add_argument(
        "source", help="digits | a folder of images or .npz files | a .npy array | torchvision:NAME:ROOT"
    )
    shards.add_argument("out_dir", help="new folder for the shards and manifest.json")
    shards.add_argument("--encoding", choices=("png", "npy"), default="png", help="image format inside the tars")
    shards.add_argument("--resolution", type=int, help="resize every image to R×R (bicubic)")
    shards.add_argument("--samples-per-shard", type=int, default=1000, help="images per shard (default 1000)")
    shards.add_argument("--shard-size-mb", type=float, help="start a new shard past this size instead")
    shards.add_argument(
        "--val-fraction", type=float, default=0.1, help="validation share, for sources without their own split"
    )
    shards.add_argument(
        "--test-fraction", type=float, default=0.2, help="test share, for sources without their own split"
    )
    shards.add_argument(
        "--seed", type=int, default=3, help="seed of the random split (sources without their own) and of the order"
    )
    shards.add_argument(
        "--no-shuffle",
        action="store_true",
        help="keep the source's order (default: each split in a seeded random order, so every shard is a random "
        "sample; a class-folder source otherwise fills its first shards with its first classes)",
    )
    shards.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it is not empty")
    shards.add_argument("--no-progress", action="store_true", help="no progress bar")
    shards.set_defaults(func=_shards, overrides=None)

    sweep = commands.add_parser(
        "sweep",
        help="train every config with every seed: one after another here, or as one SLURM job array",
        description="One run per (config, seed), named <config-stem>-s<seed> under --out. Running the same "
        "command again skips finished runs (and runs being trained or queued) and resumes interrupted ones; a run "
        "folder trained with other settings than the sweep's now is refused. Local output: OUT/logs/<run>.log.",
    )
    sweep.add_argument(
        "overrides", nargs="*", metavar="CONFIG|key=value", help="config files, then overrides for every run"
    )
    sweep.add_argument("--seeds", default="0", help="train.seed of each run: 0,1,2 or 0-2 (default 0)")
    sweep.add_argument("--out", required=True, help="folder of the sweep's run folders")
    sweep.add_argument("--executor", choices=("local", "slurm"), default="local", help="where the runs train")
    sweep.add_argument("--parallel", type=int, default=1, help="local: runs at a time (default 1)")
    sweep.add_argument("--nproc", type=int, default=1, help="local: ranks per run (torchrun; default 1)")
    sweep.add_argument(
        "--sbatch-args",
        metavar='"OPTIONS"',
        help='slurm: sbatch options of every task, e.g. --sbatch-args="--nodes 1 --time 02:00:00 --gres gpu:1" '
        "(defaults: launchers/slurm.sbatch's #SBATCH lines)",
    )
    sweep.add_argument("--dry-run", action="store_true", help="print what would run (and the sbatch line); run nothing")
    sweep.set_defaults(func=_sweep)

    compare = commands.add_parser(
        "compare",
        help="bits/dim of runs and each run's paired per-image difference to a baseline",
        description="Test bits/dim ± standard error of every run (a run folder: its best checkpoint's evaluation; "
        "an evaluation folder; a sweep's folder: all its runs) and, against the baseline (the first run, or "
        "--baseline), the mean per-image difference over the images both evaluated with its standard error and "
        "95 % interval; the seeds of one config (<stem>-s<seed>) aggregated.",
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run folders, evaluation folders or a sweep's folder")
    compare.add_argument("--split", choices=("test", "val", "train"), default="test", help="default: test")
    compare.add_argument("--baseline", metavar="RUN", help="the run the others are paired against (default: first)")
    compare.add_argument("--out", metavar="FILE.csv", help="write the table as CSV and the figure as FILE.png")
    compare.set_defaults(func=_compare, overrides=None)

    bench = commands.add_parser("bench", help="benchmarks that write CSV (see docs/benchmarks.md)")
    bench.add_argument(
        "what",
        choices=("data", "kernels", "train", "scale", "eval"),
        help="data: shard streaming vs one file per image; kernels: fused ops vs eager vs torch.compile; "
        "train: steps/s and peak memory of aef-center, aef-linear and vae training steps; scale: per-rank memory "
        "and step time of DDP and ZeRO 0-3 on 1, 2 and 4 ranks; eval: images/s of likelihood evaluation on 1 and 2 "
        "ranks and its peak memory against K",
    )
    bench.add_argument("--out", help="CSV file to write (default bench/<what>.csv; kernels also writes a .png plot)")
    bench.add_argument("--images", type=int, default=4096, help="data: images per shape")
    bench.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="kernels: a tiny run on the CPU (interpreter) that checks the benchmark itself, not speed; "
        "scale --big: the same cases on a tiny model and no memory cap",
    )
    bench.add_argument(
        "--big",
        action="store_true",
        help="scale: a model larger than one process (311 M parameters; default --out bench/scale-big.csv): one "
        "process under a memory cap runs out of memory, 2 ZeRO-3 ranks under the same cap train, resume and "
        "export it; peak RSS per process against 16 bytes per parameter over the processes",
    )
    bench.add_argument("--width", type=int, help="scale --big: the big nets' channel width (default 2880)")
    bench.add_argument(
        "--memory-cap", type=float, help="scale --big: each process's memory cap in GiB (RLIMIT_DATA; default 4.5)"
    )
    bench.add_argument(
        "--host",
        action="store_true",
        help="kernels: the microseconds each fused op's driver spends on the host per call (forward, forward + "
        "backward), under Triton's CPU interpreter with the launches skipped, against eager at 2 rows "
        "(default --out bench/kernels-host.csv)",
    )
    bench.add_argument(
        "--traffic",
        action="store_true",
        help="kernels: print the bytes per element each op moves (Triton, eager, minimum) as a markdown table, "
        "measured under Triton's CPU interpreter; times nothing",
    )
    bench.add_argument(
        "--vs-limit",
        action="store_true",
        help="eval: GFLOP/s of training steps and evaluation batches against the same run's float32 matmul rate, "
        "with the profile's top ops and each decoder layer alone (default --out bench/eval-vs-limit.csv)",
    )
    bench.set_defaults(func=_bench, overrides=None)
    return parser


def _plain_warning_lines() -> None:
    """Print aef_hpc's own warnings as one plain line each (no source line under them: not a crash)."""
    python_format = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        if issubclass(category, AEFWarning):
            return f"aef-hpc: warning: {message}\n"
        return python_format(message, category, filename, lineno, line)

    if getattr(warnings.formatwarning, "__module__", None) != __name__:
        warnings.formatwarning = formatwarning


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _plain_warning_lines()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = argv
    try:
        if args.overrides is None and rest:  # a command without key=value arguments
            hint = " (a checkpoint is chosen by its folder: RUN/checkpoints/step-N)" if args.command == "export" else ""
            raise ConfigError(f"{args.command} takes no argument {' '.join(rest)}{hint}")
        args.overrides = [*(args.overrides or []), *rest]  # key=value after a flag
        with sigterm_as_interrupt():
            return args.func(args)
    except AEFError as exc:
        print(f"aef-hpc: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("aef-hpc: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError, OSError) as exc:  # a failed allocation is one line too; anything else a bug
        oom = out_of_memory(exc)
        if oom is None:
            raise
        print(f"aef-hpc: error: {oom}", file=sys.stderr)
        return oom.exit_code


if __name__ == "__main__":
    sys.exit(main())
