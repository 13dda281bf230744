"""``aef-hpc bench kernels``: each fused op against eager and ``torch.compile`` of its reference, in one run.

For every case of ``kernel_cases`` (each op with full-size operands, and the decoder's loss path), per-sample
size, provider and mode (forward, backward on one saved graph, full): the 20/50/80 % quantiles of the per-run
milliseconds after warm-up, each run starting with the leaves' ``.grad`` set to None. Bytes per element of
``[batch, n]``: what the provider really moves (``traffic``) and the minimum the case needs; ``gbps`` from the
real bytes with its fraction of the copy bandwidth measured in the same run, ``min_gbps`` from the minimum (an
effective bandwidth, comparable across providers); each Triton row's median speed-up over eager and compile.
Then a whole training step of the big aef-linear with kernels on and off (``kernel_step``).
"""

import math
from importlib.metadata import version

import torch

from aef_hpc.errors import ConfigError
from aef_hpc.kernels.fused.tuning import tuned_configs

from ..progress import Progress
from .kernel_cases import CASES, MODES, PROVIDERS, Runner, make_inputs, minimum_bytes, provider_fn
from .kernel_step import step_rows
from .plots import bar_chart
from .report import write_csv
from .timing import copy_bandwidth_gbps, peak_mb, quantiles, saved_mb, time_runs
from .traffic import bytes_moved

SIZES = {"784": 784, "3x32x32": 3 * 32 * 32, "3x64x64": 3 * 64 * 64, "3x128x128": 3 * 128 * 128}
COLUMNS = (
    "op",
    "case",
    "provider",
    "mode",
    "size",
    "batch",
    "dtype",
    "ms_p20",
    "ms_p50",
    "ms_p80",
    "bytes_per_elem",
    "min_bytes_per_elem",
    "gbps",
    "min_gbps",
    "copy_gbps",
    "frac_copy_bw",
    "speedup_vs_eager",
    "speedup_vs_compile",
    "peak_mb",
    "saved_mb",
    "config",
)


def _configs(before: dict) -> str:
    """What the tuner chose since ``before`` (direction: block × rows per program, warps); empty when nothing
    was tuned (the interpreter, or shapes an earlier case tuned)."""
    chosen = [(key, cfg) for key, cfg in tuned_configs().items() if key not in before]
    return " ".join(f"{key[1]}:{cfg.block}x{cfg.rows}w{cfg.warps}" for key, cfg in chosen)


def _case_rows(case, size, n, batch, providers, modes, dtype, device, copy_bw, warmup, repeats) -> list[dict]:
    leaves, grads = make_inputs(case, batch, n, device, dtype)
    elements = batch * n
    tuned_before = tuned_configs()
    rows = []
    for provider in providers:
        runner = Runner(provider_fn(case, provider), leaves, grads)
        for mode in modes:
            run = runner.mode(mode)
            p20, p50, p80 = quantiles(time_runs(run, device, warmup, repeats, runner.reset))
            runner.reset()
            per_elem = bytes_moved(provider, run) / elements
            minimum = minimum_bytes(case, mode, dtype)
            gbps = per_elem * elements / (p50 * 1e-3) / 1e9
            rows.append(
                dict(
                    op=case.op,
                    case=case.case,
                    provider=provider,
                    mode=mode,
                    size=size,
                    batch=batch,
                    dtype=str(dtype).removeprefix("torch."),
                    ms_p20=round(p20, 4),
                    ms_p50=round(p50, 4),
                    ms_p80=round(p80, 4),
                    bytes_per_elem=round(per_elem, 2),
                    min_bytes_per_elem=minimum,
                    gbps=round(gbps, 1),
                    min_gbps=round(minimum * elements / (p50 * 1e-3) / 1e9, 1),
                    copy_gbps=round(copy_bw, 1),
                    frac_copy_bw=round(gbps / copy_bw, 3),
                    peak_mb=round(peak_mb(run, device, runner.reset), 2),
                    saved_mb=round(saved_mb(runner.forward, device), 2) if mode == "forward" else math.nan,
                )
            )
    config = _configs(tuned_before)
    for row in rows:
        row["config"] = config if row["provider"] == "triton" else ""
    return rows


def run_ops(
    device,
    sizes=SIZES,
    batch=256,
    providers=PROVIDERS,
    modes=MODES,
    dtype=torch.float32,
    warmup=10,
    repeats=100,
    copy_mb=1024,
) -> list[dict]:
    """The rows of every case × size × provider × mode (without the speed-ups)."""
    copy_bw = copy_bandwidth_gbps(device, copy_mb, warmup, repeats)
    rows = []
    with Progress(len(CASES) * len(sizes), "bench kernels", "case") as bar:
        for case in CASES:
            for size, n in sizes.items():
                rows += _case_rows(case, size, n, batch, providers, modes, dtype, device, copy_bw, warmup, repeats)
                bar.update()
    return rows


def add_speedups(rows: list[dict]) -> None:
    """``speedup_vs_eager`` and ``speedup_vs_compile`` of each Triton row: the other provider's median ms over its
    own, same op, case, size and mode (NaN elsewhere or where that provider did not run); in place."""
    median = {(r["op"], r["case"], r["size"], r["mode"], r["provider"]): r["ms_p50"] for r in rows}
    for r in rows:
        for other in ("eager", "compile"):
            theirs = median.get((r["op"], r["case"], r["size"], r["mode"], other))
            mine = r["ms_p50"] if r["provider"] == "triton" else None
            r[f"speedup_vs_{other}"] = round(theirs / mine, 3) if theirs and mine else math.nan


#: ``--cpu-smoke``: one small size, Triton (the interpreter) and eager, few runs: checks the code, not speed
SMOKE = dict(
    sizes={"784": 784},
    batch=4,
    providers=("triton", "eager"),
    warmup=1,
    repeats=2,
    copy_mb=8,
    model=dict(batch=2, latent=8, warmup=0, repeats=1, image=(3, 8, 8)),
)


def table(rows: list[dict]) -> str:
    """One line per row: p50 time, bytes per element against the minimum, bandwidth and speed-ups."""
    return "\n".join(
        f"{r['op']:26s} {r['case']:11s} {r['provider']:8s} {r['mode']:8s} {r['size']:10s}"
        f" p50 {r['ms_p50']:>10.4f} ms  {r['bytes_per_elem']:>6} B/elem (min {r['min_bytes_per_elem']})"
        f"  {r['gbps']:>8} GB/s  {r['frac_copy_bw']:>6} of copy  {r['speedup_vs_eager']:>6}x eager"
        f"  {r['speedup_vs_compile']:>6}x compile"
        for r in rows
    )


def _device(cpu_smoke: bool) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if cpu_smoke:
        return torch.device("cpu")
    raise ConfigError(
        "aef-hpc bench kernels needs a CUDA device (timings of Triton's CPU interpreter mean nothing); "
        "--cpu-smoke runs a tiny smoke test of the benchmark itself"
    )


def run(out="bench/kernels.csv", plot="bench/kernels.png", cpu_smoke=False, model=None, **kw) -> list[dict]:
    """Measure the ops (``kw``: ``run_ops``' options) and the training step (``model``: ``step_rows``' options),
    write ``out`` (CSV with the environment and Triton version columns) and the bar chart ``plot``."""
    device = _device(cpu_smoke)
    measured = run_ops(device, **kw) + step_rows(device, **(model or {}))
    blank = {**dict.fromkeys(COLUMNS, math.nan), "config": ""}
    rows = [{**blank, **r, "triton": version("triton")} for r in measured]
    add_speedups(rows)
    write_csv(rows, out)
    bar_chart(rows, plot, [case.op for case in CASES])
    return rows
