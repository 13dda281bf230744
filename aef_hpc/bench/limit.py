"""``aef-hpc bench eval --vs-limit``: how close training steps and evaluation batches come to this machine's limit.

The limit is the same run's float32 matmul rate (``2048x2048 @ 2048x2048``, the best of ``PEAK_REPEATS`` runs at
the start and at the end of the run, the higher: a shared machine's slow moment must not lower it). A case's rate
is its FLOPs (``torch.utils.flop_counter.FlopCounterMode``: matmuls and convolutions, forward and backward; the
element-wise work is not counted) over its median time, so ``pct_of_peak`` is the share of the matmul rate the case
reaches. Cases, on the models of ``bench train``'s ``small`` case (1×28×28, small nets, latent 2, MAF prior, IAF
posterior for the VAE, MAF core for the AEF):

- ``train``: one training step of the loop (``model.loss(x).mean()``, backward, Adam, ``zero_grad``), batch 128;
- ``eval``: one evaluation batch (``images`` images, K draws, one repeat): ``before``, the model as built (NCHW
  weights, float32, ``no_grad``) at 32 draws per pass, as evaluation ran until ``evaluation_mode`` and
  ``draws_per_chunk``; ``fp32``, ``aef-hpc eval``'s default now (``per_image_nll``: channels-last weights on the
  CPU, draws per pass chosen for the device); ``bf16``, its opt-in
  ``eval.precision=bf16`` (only where bf16 is hardware: a GPU, a CPU with AMX or AVX512-BF16). ``max_abs_diff`` is
  the largest per-image ``|NLL - NLL_before|`` in nats; ``batch_split_diff`` the same between one batch and the same
  images in batches of 5 (what float32 rounding alone moves when ranks split the images otherwise);
- ``layer``: each layer of the evaluation batch's decoder alone, as ``fp32`` runs it, on the input it receives there
  (``draws per pass x images`` rows, and at ``before``'s 32 draws per pass; ``calls``: passes per batch): the
  ceiling of the ``eval`` rows, since the decoder does most of their FLOPs;
- ``train-layer``: each layer of the training step that does FLOPs (convolutions, linear and masked layers, in the
  encoder, decoder and flows) alone, forward and backward on the input it receives in the step (its gradient only
  where the step needs one), ``calls`` times as the step calls it; ``train-layers`` their sum: the part of the
  step's time the counted FLOPs take at these kernels' rates (the rest is element-wise work, Adam and autograd).

``top_ops`` lists the profiler's largest self times of the case (``torch.profiler``) as shares of its total.
"""

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from ..data import dequantize
from ..evaluate.likelihood import bf16_is_fast, draws_per_chunk, evaluation_mode, per_image_nll, per_image_nll_as_is
from ..progress import Progress
from .eval import random_images
from .report import write_csv
from .timing import sync
from .train import LR, build

MODELS = ("vae", "aef-linear")
TRAIN_BATCH = 128
BEFORE_CHUNK = 32  # eval.chunk_size's default until draws_per_chunk
PEAK_SIZE = 2048
PEAK_REPEATS = 10
TOP_OPS = 4


def median_seconds(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``repeats`` runs after one untimed warm-up."""
    run()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_gflops(device: torch.device) -> float:
    """GFLOP/s of one float32 ``2048x2048 @ 2048x2048`` matmul, the fastest of ``PEAK_REPEATS`` runs."""
    a, b = (torch.randn(PEAK_SIZE, PEAK_SIZE, device=device, dtype=torch.float32) for _ in range(2))
    a @ b
    times = []
    for _ in range(PEAK_REPEATS):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * PEAK_SIZE**3 / min(times) / 1e9


def count_flops(run: Callable[[], object]) -> int:
    """The matmul and convolution FLOPs of one ``run()`` (under ``no_grad`` where it has no backward:
    the counter's module tracker needs autograd)."""
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def top_ops(run: Callable[[], object], device: torch.device) -> str:
    """``op share%; ...``: the largest self times of one ``run()``."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1
    return "; ".join(f"{e.key} {100 * getattr(e, key) / total:.0f}%" for e in events[:TOP_OPS])


def _row(kind, model, variant, seconds, flops, **extra) -> dict:
    """A case's row; ``pct_of_peak`` is filled in when the run's peak is known (``_against``)."""
    rate = flops / seconds / 1e9
    return {"kind": kind, "model": model, "variant": variant, "ms": round(1e3 * seconds, 2),
            "gflop": round(flops / 1e9, 3), "gflop_per_s": round(rate, 1), "pct_of_peak": rate,
            "max_abs_diff": "", "batch_split_diff": "", "top_ops": "", "calls": "", "error": "", **extra}  # fmt: skip


def _against(rows: list[dict], peak: float) -> list[dict]:
    """Each row's rate (still exact in ``pct_of_peak``) as a percentage of ``peak``."""
    for row in rows:
        row["pct_of_peak"] = round(100 * row["pct_of_peak"] / peak, 1)
    return rows


def _train_rows(name: str, device, repeats: int, precision: str) -> list[dict]:
    """The training step's row, and in float32 its layers' (``_train_layer_rows``)."""
    torch.manual_seed(0)
    model = build(name, "small").to(device).train()
    x = dequantize(random_images(TRAIN_BATCH)[1], 256).to(device)
    with torch.no_grad():
        model.initialize(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        with autocast:
            loss = model.loss(x).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    flops = count_flops(step)
    row = _row("train", name, precision, median_seconds(step, device, repeats), flops)
    row["top_ops"] = top_ops(step, device)
    if precision != "fp32":
        return [row]
    return [row, *_train_layer_rows(model, x, name, device, repeats)]


def _train_layer_rows(model, x, name: str, device, repeats: int) -> list[dict]:
    """Each FLOP-doing layer of the training step alone, forward and backward, and their sum."""
    calls: dict[torch.nn.Module, list] = {}

    def keep_input(module, args, _):
        if len(args) == 1 and isinstance(args[0], torch.Tensor):  # a layer called on one tensor can be timed alone
            calls.setdefault(module, []).append(args[0].detach().requires_grad_(args[0].requires_grad))

    leaves = [m for m in model.modules() if not list(m.children()) and any(True for _ in m.parameters())]
    hooks = [m.register_forward_hook(keep_input) for m in leaves]
    model.loss(x).mean()
    for hook in hooks:
        hook.remove()
    rows, total_seconds, total_flops = [], 0.0, 0
    for module, inputs in calls.items():
        x_in = inputs[0]
        out = module(x_in)
        if not isinstance(out, torch.Tensor) or not out.requires_grad:  # an ActNorm's (y, logdet): no FLOPs
            continue
        grad = torch.randn_like(out)

        def run(module=module, x_in=x_in, grad=grad):
            module(x_in).backward(grad)
            module.zero_grad(set_to_none=True)
            x_in.grad = None

        flops = count_flops(run)
        if not flops:
            continue
        seconds = median_seconds(run, device, repeats)
        what = f"{type(module).__name__} {tuple(x_in.shape)}"
        rows.append(_row("train-layer", name, what, seconds, flops, calls=len(inputs)))
        total_seconds += len(inputs) * seconds
        total_flops += len(inputs) * flops
    if rows:
        rows.append(_row("train-layers", name, f"{len(rows)} layers", total_seconds, total_flops))
    return rows


class _Evaluation:
    """One model's evaluation batch, its float32 records, and the rows of its variants."""

    def __init__(self, name: str, device, images: int, num_samples: int):
        torch.manual_seed(0)
        self.name, self.device, self.num_samples = name, device, num_samples
        self.model = build(name, "small").to(device)
        self.keys, self.pixels = random_images(images)
        with torch.no_grad():
            self.model.initialize(dequantize(self.pixels, 256).to(device))

    def nll(self, variant: str, batch: int | None = None) -> torch.Tensor:
        batch = batch or len(self.keys)
        batches = [(self.keys[i : i + batch], self.pixels[i : i + batch]) for i in range(0, len(self.keys), batch)]
        args = (self.model, batches, 256, self.num_samples, 1)
        if variant == "before":
            with torch.no_grad():
                return per_image_nll_as_is(*args, BEFORE_CHUNK, 0, self.device).nll
        return per_image_nll(*args, None, 0, self.device, precision=variant).nll

    def row(self, variant: str, repeats: int, reference: torch.Tensor) -> dict:
        run = lambda: self.nll(variant)  # noqa: E731
        row = _row("eval", self.name, variant, median_seconds(run, self.device, repeats), count_flops(run))
        records = run()
        row["max_abs_diff"] = f"{(records - reference).abs().max().item():.3g}"
        row["batch_split_diff"] = f"{(self.nll(variant, 5) - records).abs().max().item():.3g}"
        row["top_ops"] = top_ops(run, self.device)
        return row

    def layer_rows(self, repeats: int) -> list[dict]:
        """Each decoder layer alone, as ``fp32`` evaluation runs it, on the input it gets in one pass: at the
        default's draws per pass and at ``before``'s 32 (``calls``: passes per batch)."""
        leaves = [m for m in self.model.decoder.modules() if not list(m.children())]
        x = dequantize(self.pixels, 256).to(self.device)
        default = draws_per_chunk(None, len(x), x[0].numel(), self.num_samples, self.device)
        rows = []
        with evaluation_mode(self.model, self.device):
            for chunk in dict.fromkeys((default, BEFORE_CHUNK)):
                inputs = {}

                def keep_input(module, args, _, inputs=inputs):
                    inputs.setdefault(module, args[0].detach())  # the first pass's

                hooks = [m.register_forward_hook(keep_input) for m in leaves]
                self.model.log_importance_weights(x, chunk, chunk)
                for hook in hooks:
                    hook.remove()
                for module, x_in in inputs.items():
                    run = lambda module=module, x_in=x_in: module(x_in)  # noqa: E731
                    what = f"{type(module).__name__} {tuple(x_in.shape)}"
                    seconds = median_seconds(run, self.device, repeats)
                    passes = -(-self.num_samples // chunk)
                    rows.append(_row("layer", self.name, what, seconds, count_flops(run), calls=passes))
        return rows


def _eval_rows(name: str, device, repeats: int, images: int, num_samples: int) -> list[dict]:
    evaluation = _Evaluation(name, device, images, num_samples)
    evaluation.model.eval()
    reference = evaluation.nll("before")
    variants = ("before", "fp32", "bf16") if bf16_is_fast(device) else ("before", "fp32")
    return [evaluation.row(v, repeats, reference) for v in variants] + evaluation.layer_rows(repeats)


def run(out: str | Path, repeats: int = 5, images: int = 32, num_samples: int = 128, models=MODELS) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    bar = Progress(1 + len(models) * (2 + bf16_is_fast(device)), "bench eval --vs-limit", "case")  # + eval's
    try:
        first = matmul_peak_gflops(device)
        rows = []
        bar.update()
        for name in models:
            for precision in ("fp32", "bf16") if bf16_is_fast(device) else ("fp32",):
                rows += _train_rows(name, device, repeats, precision)
                bar.update()
            rows += _eval_rows(name, device, repeats, images, num_samples)
            bar.update()
        peak = max(first, matmul_peak_gflops(device))
        flops = 2 * PEAK_SIZE**3
        rows = _against([_row("peak", "", f"matmul {PEAK_SIZE}^2 float32", flops / peak / 1e9, flops), *rows], peak)
    finally:
        torch.set_default_dtype(previous)
        bar.close()
    write_csv(rows, out)
    return rows


def table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        what = f"{r['kind']:6s} {r['model']:10s} {r['variant']:34s}"
        diff = f"  diff {r['max_abs_diff']} split {r['batch_split_diff']}" if r["kind"] == "eval" else ""
        lines.append(f"{what} {r['ms']:>9} ms {r['gflop_per_s']:>7} GFLOP/s {r['pct_of_peak']:>5}%{diff}")
    return "\n".join(lines)
