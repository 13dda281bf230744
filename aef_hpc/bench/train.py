"""``aef-hpc bench train``: steps/s and peak memory of one training step, AEF against the VAE, eager and compiled.

The paper calls the AEF a drop-in replacement for the VAE; this measures what the swap costs per step. Every model
of a case has the same encoder/decoder (``build_model`` with the case's architecture and latent size) and the
paper's flows: a MAF prior, a MAF core flow for the AEFs and an IAF posterior flow for the VAE (256 hidden).

Cases: ``small`` (1×28×28, latent 2, batch 128, alpha 1e-6) and ``big`` (3×64×64, latent 64, batch 16,
alpha 0.05). One step is the training loop's: ``model.loss(x).mean()``, ``backward``, ``clip_grad_norm_(200)``,
Adam, ``zero_grad(set_to_none=True)``, on one batch of random dequantized images made once, untimed.
ActNorm layers are initialised by ``model.initialize(x)`` before any step or compile.

``compiled`` wraps the loss in ``torch.compile`` (column ``compiled_part``: ``loss``, i.e. the forward and, through
AOTAutograd, its backward; clipping and Adam stay eager). Warm-up steps are untimed; the first one, where
compilation happens, is timed alone (``compile_s``, compiled rows). Then ``repeats`` steps are timed one by one
with ``time.perf_counter`` (after ``torch.cuda.synchronize()`` on CUDA); rows give the median.

Memory. CUDA: ``peak_cuda_mb`` is ``torch.cuda.max_memory_allocated`` over the case (model build, warm-up and
compile, timed steps) and ``steps_cuda_mb`` the same over the timed steps only (``reset_peak_memory_stats`` after
the warm-up); both count everything allocated, weights and Adam state included. CPU: each case runs in a fresh
``python -c`` process; ``peak_rss_mb`` is its peak RSS (``ru_maxrss``) minus its RSS before the model was built
(torch already imported), so compiled rows include the compiler's own memory; ``steps_rss_mb`` is the peak RSS
over the timed steps only (``VmHWM`` after ``echo 5 > /proc/self/clear_refs``) minus the same start, empty where
the kernel does not allow the reset. RSS counts pages the allocator has not given back: compare rows, not bytes.

A compile (or step) that fails becomes a row with its ``error`` and empty timings; the other cases still run.
``step_vs_vae`` is a row's median step time over the VAE's of the same case and mode (aef/vae; 1.0 for the VAE);
``compiled_speedup`` is the eager median over the compiled median of the same case and model.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ..data import dequantize
from ..models import build_model
from ..progress import Progress
from .report import write_csv
from .timing import sync

CASES = {
    "small": dict(shape=(1, 28, 28), architecture="small", latent_dim=2, batch=128, alpha=1e-6),
    "big": dict(shape=(3, 64, 64), architecture="big", latent_dim=64, batch=16, alpha=0.05),
}
MODELS = ("aef-center", "aef-linear", "vae")
MODES = ("eager", "compiled")
FLOW_HIDDEN = 256
GRAD_CLIP = 200.0
LR = 1e-4  # 1e-3 makes the big aef-linear diverge within 3 steps on random noise; speed does not depend on it
COMPILED_PART = "loss"
_RESULT = "AEF_BENCH_TRAIN_RESULT "
_MEMORY = ("peak_rss_mb", "steps_rss_mb", "peak_cuda_mb", "steps_cuda_mb")


def build(name: str, case: str):
    """The case's model: same networks for every name; MAF prior, MAF core (AEF) or IAF posterior (VAE)."""
    c = CASES[case]
    return build_model(
        name,
        c["shape"],
        c["latent_dim"],
        architecture=c["architecture"],
        prior_flow="maf",
        posterior_flow="iaf" if name in ("vae", "iwae") else "maf",
        alpha=c["alpha"],
        flow_hidden=FLOW_HIDDEN,
    )


def _rss_kb() -> int:
    """Current resident set size in KiB (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise OSError("no VmRSS in /proc/self/status")


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` (the peak RSS of this process) to the current RSS; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise OSError("no VmHWM in /proc/self/status")


def _warm_up_torch() -> None:
    """One tiny conv/linear Adam step: the ~100 MB torch's CPU libraries take on first use is not the model's."""
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GELU(), nn.Flatten(), nn.Linear(64, 2))
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.rand(2, 1, 4, 4)).square().mean().backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimizer.step()


def _kernels_on(device: torch.device) -> str:
    """Which implementation the fused ops run in this case (``kernels=auto``: Triton on CUDA tensors)."""
    from .. import kernels

    mode = kernels.get_kernels()
    return "triton" if mode == "triton" or (mode == "auto" and device.type == "cuda") else "eager"


def _short(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:400]


def _empty_row(model_name: str, case: str, mode: str, batch: int, part: str, device: torch.device) -> dict:
    c = CASES[case]
    return dict(
        model=model_name,
        arch=c["architecture"],
        shape="x".join(map(str, c["shape"])),
        latent=c["latent_dim"],
        batch=batch,
        mode=mode,
        compiled_part=part if mode == "compiled" else "",
        kernels=_kernels_on(device),
        ms_per_step="",
        steps_per_s="",
        images_per_s="",
        ms_min="",
        ms_max="",
        compile_s="",
        first_step_s="",
        graphs="",
        graph_breaks="",
        final_loss="",
        **{k: "" for k in _MEMORY},
        error="",
    )


def measure(
    model_name: str, case: str, mode: str, batch: int, warmup: int, repeats: int, device, part: str = COMPILED_PART
) -> dict:
    """One case in this process: the row without the derived columns (memory as this device measures it).

    ``part`` is what ``compiled`` compiles: ``loss`` (forward; AOTAutograd compiles its backward) or ``step``
    (the whole step function: dynamo breaks the graph at ``backward`` and compiles clipping and Adam apart).
    """
    device = torch.device(device)
    row = _empty_row(model_name, case, mode, batch, part, device)
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        if mode != "compiled":
            _measure(row, model_name, case, mode, batch, warmup, repeats, device, part)
        else:  # a cold compile: a fresh inductor cache, not what an earlier case or run left in /tmp
            from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

            with tempfile.TemporaryDirectory(prefix="aef-bench-inductor-") as cache, temporary_cache_dir(cache):
                torch._dynamo.reset()
                torch._dynamo.utils.counters.clear()
                _measure(row, model_name, case, mode, batch, warmup, repeats, device, part)
                counters = torch._dynamo.utils.counters
                row["graphs"] = counters["stats"].get("unique_graphs", 0)
                row["graph_breaks"] = sum(counters["graph_break"].values())
                torch._dynamo.reset()
    except Exception as error:  # a failed compile or step is a row, not a crash
        row["error"] = _short(error)
        for key in ("ms_per_step", "steps_per_s", "images_per_s", "ms_min", "ms_max"):
            row[key] = ""
    finally:
        torch.set_default_dtype(previous_dtype)
    return row


def _measure(row, model_name, case, mode, batch, warmup, repeats, device, part) -> None:
    """Fill ``row``'s timings and memory; exceptions go to the caller."""
    c = CASES[case]
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        start_cuda = torch.cuda.memory_allocated(device)
    else:
        _warm_up_torch()
        start_rss = _rss_kb()
    x = dequantize(torch.randint(0, 256, (batch, *c["shape"]), dtype=torch.uint8), 256).to(device)
    model = build(model_name, case).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    with torch.no_grad():
        model.initialize(x)  # ActNorm's data-dependent initialisation, before any compile

    def loss_of(images):
        return model.loss(images).mean()

    loss_fn = torch.compile(loss_of) if mode == "compiled" and part == "loss" else loss_of

    def step():
        loss = loss_fn(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    if mode == "compiled" and part == "step":
        step = torch.compile(step)
    loss = None
    for i in range(max(warmup, 1) if mode == "compiled" else warmup):  # a compile always happens in warm-up
        sync(device)
        begin = time.perf_counter()
        loss = step()
        sync(device)
        if i == 0:
            row["first_step_s"] = round(time.perf_counter() - begin, 3)
            if mode == "compiled":
                row["compile_s"] = row["first_step_s"]
    if cuda:
        warm_peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        warm_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; the reset below lowers it too
        hwm_reset = _reset_hwm()
    times = []
    for _ in range(repeats):
        sync(device)
        begin = time.perf_counter()
        loss = step()
        sync(device)
        times.append(time.perf_counter() - begin)
    if loss is not None:  # the batch mean; a non-finite loss would make the timings suspect
        row["final_loss"] = round(loss.item(), 3)
    if times:
        ms = statistics.median(times) * 1e3
        row.update(
            ms_per_step=round(ms, 3),
            steps_per_s=round(1e3 / ms, 3),
            images_per_s=round(batch * 1e3 / ms, 1),
            ms_min=round(min(times) * 1e3, 3),
            ms_max=round(max(times) * 1e3, 3),
        )
    if cuda:
        steps_peak = torch.cuda.max_memory_allocated(device)
        row["steps_cuda_mb"] = round((steps_peak - start_cuda) / 2.0**20, 1)
        row["peak_cuda_mb"] = round((max(steps_peak, warm_peak) - start_cuda) / 2.0**20, 1)
    else:
        peak = max(warm_rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        row["peak_rss_mb"] = round((peak - start_rss) / 1024, 1)
        if hwm_reset:
            row["steps_rss_mb"] = round((_hwm_kb() - start_rss) / 1024, 1)


def _child() -> None:
    """Entry of the fresh process that measures one CPU case: arguments as JSON in argv[1], the row on stdout."""
    args = json.loads(sys.argv[1])
    torch.set_num_threads(args.pop("threads"))
    row = measure(**args)
    print(_RESULT + json.dumps(row), flush=True)


def _measure_in_subprocess(model_name, case, mode, batch, warmup, repeats, device, part) -> dict:
    args = dict(
        model_name=model_name,
        case=case,
        mode=mode,
        batch=batch,
        warmup=warmup,
        repeats=repeats,
        device=str(device),
        part=part,
        threads=torch.get_num_threads(),
    )
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    code = "from aef_hpc.bench.train import _child; _child()"
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, env=env, cwd=root
    )
    for line in done.stdout.splitlines():
        if line.startswith(_RESULT):
            return json.loads(line[len(_RESULT) :])
    tail = [line for line in done.stderr.splitlines() if line.strip()][-1:] or [""]
    row = _empty_row(model_name, case, mode, batch, part, torch.device(device))
    row["error"] = f"subprocess failed (exit {done.returncode}): {tail[0].strip()}"[:400]
    return row


def _derive(rows: list[dict]) -> None:
    """``step_vs_vae`` (same case and mode) and ``compiled_speedup`` (same case and model), in place."""
    ms = {(r["arch"], r["mode"], r["model"]): r["ms_per_step"] for r in rows}
    for r in rows:
        vae = ms.get((r["arch"], r["mode"], "vae"), "")
        r["step_vs_vae"] = round(r["ms_per_step"] / vae, 3) if r["ms_per_step"] != "" and vae not in ("", None) else ""
        eager = ms.get((r["arch"], "eager", r["model"]), "")
        r["compiled_speedup"] = (
            round(eager / r["ms_per_step"], 3)
            if r["mode"] == "compiled" and r["ms_per_step"] != "" and eager not in ("", None)
            else ""
        )


def run(
    out: str,
    cases=("small", "big"),
    models=MODELS,
    modes=MODES,
    warmup: int = 3,
    repeats: int = 10,
    batch: int | None = None,
    device=None,
    compiled_part: str = COMPILED_PART,
) -> list[dict]:
    """Measure every (case, model, mode), write ``out`` (CSV with the environment columns) and return the rows.

    ``batch`` overrides every case's batch size; ``device`` defaults to CUDA when available. CPU cases each run
    in a fresh process (for an honest peak RSS); CUDA cases run here, one after the other. ``compiled_part``:
    ``loss`` (default) or ``step`` (see ``measure``; on the CPU ``step`` doubled the compile time for no gain).
    """
    choices = {"case": (cases, CASES), "model": (models, MODELS), "mode": (modes, MODES)}
    choices["compiled_part"] = ((compiled_part,), ("loss", "step"))
    for name, (values, allowed) in choices.items():
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise ValueError(f"unknown {name} {unknown}: choose from {', '.join(allowed)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    rows = []
    bar = Progress(len(cases) * len(modes) * len(models), "bench train", "case")
    for case in cases:
        size = batch or CASES[case]["batch"]
        for mode in modes:
            for name in models:
                load = round(os.getloadavg()[0], 2)  # others' work on this machine skews the timings
                if device.type == "cuda":
                    row = measure(name, case, mode, size, warmup, repeats, device, compiled_part)
                else:
                    row = _measure_in_subprocess(name, case, mode, size, warmup, repeats, device, compiled_part)
                row["load_1min"] = load
                rows.append(row)
                bar.update()
    bar.close()
    _derive(rows)
    write_csv(rows, out)
    return rows


def table(rows: list[dict]) -> str:
    """The rows as the markdown table of ``docs/benchmarks.md``."""
    memory = "steps_cuda_mb" if any(r.get("steps_cuda_mb") not in ("", None) for r in rows) else "steps_rss_mb"
    peak = "peak_cuda_mb" if memory == "steps_cuda_mb" else "peak_rss_mb"
    head = (
        "| arch | shape | batch | mode | model | ms/step | steps/s | images/s | vs vae | compile (s) "
        f"| {peak} | {memory} |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        cells = [r["arch"], r["shape"].replace("x", "×"), r["batch"], r["mode"], r["model"]]
        if r.get("error"):
            cells += [f"error: {r['error']}"] + [""] * 6
        else:
            cells += [r["ms_per_step"], r["steps_per_s"], r["images_per_s"], r["step_vs_vae"], r["compile_s"]]
            cells += [r[peak], r[memory]]
        lines.append("| " + " | ".join(str(v) for v in cells) + " |")
    return "\n".join(lines)
