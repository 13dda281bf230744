"""``aef-hpc bench kernels``: each fused op against eager and ``torch.compile`` of its reference, in one run.

For every op (forward direction), mode (forward, backward, full) and per-sample size at batch 256: the median
milliseconds of many CUDA-event-timed runs after warm-up, the achieved GB/s (each input read and each output
written once), its fraction of the device's copy bandwidth measured in the same run, and the peak memory the
mode allocates (for the forward also ``saved_mb``, what it keeps alive for the backward beyond its outputs).
Then a whole training step of the big 3×64×64 aef-linear with kernels on and off.
"""

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from aef_hpc.errors import ConfigError

from .affine_coupling import affine_coupling, affine_coupling_reference
from .decoder_layer import decoder_layer, decoder_layer_reference
from .dispatch import use_kernels
from .encoder_layer import encoder_layer, encoder_layer_reference
from .logit import logit_preprocess, logit_preprocess_reference

SIZES = {"784": 784, "3x32x32": 3 * 32 * 32, "3x64x64": 3 * 64 * 64, "3x128x128": 3 * 128 * 128}
PROVIDERS = ("triton", "eager", "compile")
MODES = ("forward", "backward", "full")


@dataclass
class Op:
    name: str
    fused: Callable
    reference: Callable
    make: Callable  # (batch, n, device, dtype) -> inputs
    outputs: int  # full-size outputs written by the forward


def _normal(batch, n, device, dtype, k):
    return [torch.randn(batch, n, device=device, dtype=dtype) for _ in range(k)]


OPS = [
    Op(
        "affine_coupling",
        lambda x, s, t: affine_coupling(x, s, t, 2.0),
        lambda x, s, t: affine_coupling_reference(x, s, t, 2.0),
        lambda b, n, d, t: _normal(b, n, d, t, 3),
        1,
    ),
    Op(
        "decoder_layer",
        lambda y, mu, r: decoder_layer(y, mu, r, None, 1e-5),
        lambda y, mu, r: decoder_layer_reference(y, mu, r, None, 1e-5),
        lambda b, n, d, t: _normal(b, n, d, t, 3),
        1,
    ),
    Op(
        "encoder_layer",
        lambda mu, s, c: encoder_layer(mu, s, c, 1e-5),
        lambda mu, s, c: encoder_layer_reference(mu, s, c, 1e-5),
        lambda b, n, d, t: [v.abs() + 0.1 if i == 1 else v for i, v in enumerate(_normal(b, n, d, t, 3))],
        1,
    ),
    Op(
        "logit",
        lambda x: logit_preprocess(x, 0.05),
        lambda x: logit_preprocess_reference(x, 0.05),
        lambda b, n, d, t: [torch.rand(b, n, device=d, dtype=t)],
        1,
    ),
]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``repeats`` runs after ``warmup`` (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(samples)


def copy_bandwidth_gbps(device: torch.device, megabytes: int, warmup: int, repeats: int) -> float:
    src = torch.empty(megabytes * 2**20 // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup, repeats)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def _peak_mb(fn, device) -> float:
    if device.type != "cuda":
        return float("nan")
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _saved_mb(forward, device) -> float:
    """Memory a forward keeps alive for its backward (the autograd graph), beyond its own outputs."""
    if device.type != "cuda":
        return float("nan")
    _sync(device)
    base = torch.cuda.memory_allocated(device)
    out = forward()
    _sync(device)
    kept = torch.cuda.memory_allocated(device) - base - sum(t.numel() * t.element_size() for t in out)
    del out
    return kept / 2**20


def _runner(op: Op, provider: str, inputs, mode: str):
    """A closure running one mode; ``backward`` reuses one forward graph (retain_graph)."""
    fn = op.fused if provider == "triton" else torch.compile(op.reference) if provider == "compile" else op.reference
    kernels = "triton" if provider == "triton" else "eager"
    leaves = [x.detach().clone().requires_grad_() for x in inputs]

    def forward():
        with use_kernels(kernels):
            return fn(*leaves)

    def loss_of(out):
        return out[0].float().sum() + out[1].sum()

    if mode == "forward":
        return forward
    if mode == "full":
        return lambda: loss_of(forward()).backward()
    graph = loss_of(forward())
    return lambda: graph.backward(retain_graph=True)


def _bytes(op: Op, inputs, mode: str) -> int:
    per = inputs[0].numel() * inputs[0].element_size()
    fwd = (len(inputs) + op.outputs) * per
    bwd = (len(inputs) + op.outputs + len(inputs)) * per  # inputs re-read, grad_output read, grads written
    return {"forward": fwd, "backward": bwd, "full": fwd + bwd}[mode]


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
    copy_bw = copy_bandwidth_gbps(device, copy_mb, warmup, repeats)
    rows = []
    for op in OPS:
        for size_name, n in sizes.items():
            inputs = op.make(batch, n, device, dtype)
            for provider in providers:
                for mode in modes:
                    fn = _runner(op, provider, inputs, mode)
                    ms = time_ms(fn, device, warmup, repeats)
                    gbps = _bytes(op, inputs, mode) / (ms * 1e-3) / 1e9
                    rows.append(
                        dict(
                            op=op.name,
                            provider=provider,
                            mode=mode,
                            size=size_name,
                            batch=batch,
                            dtype=str(dtype).replace("torch.", ""),
                            ms=round(ms, 4),
                            gbps=round(gbps, 1),
                            copy_gbps=round(copy_bw, 1),
                            frac_copy_bw=round(gbps / copy_bw, 3),
                            peak_mb=round(_peak_mb(fn, device), 2),
                            saved_mb=round(_saved_mb(fn, device), 2) if mode == "forward" else float("nan"),
                        )
                    )
    return rows


def _train_step(provider: str, device, batch: int, latent: int, image):
    """A closure running one Adam step of the big aef-linear with ``kernels=provider``."""
    from aef_hpc import build_model

    torch.manual_seed(0)
    model = build_model("aef-linear", image, latent, architecture="big", prior_flow="maf", posterior_flow="maf")
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, *image, device=device)

    def step():
        with use_kernels(provider):
            loss = model.loss(x).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def model_step_rows(device, batch=16, latent=128, warmup=3, repeats=10, image=(3, 64, 64)) -> list[dict]:
    """One training step of the big aef-linear with kernels=triton and kernels=eager."""
    rows = []
    for provider in ("triton", "eager"):
        step = _train_step(provider, device, batch, latent, image)
        ms = time_ms(step, device, warmup, repeats)
        size = "x".join(map(str, image))
        rows.append(
            dict(
                op="train_step_aef_linear_big",
                provider=provider,
                mode="full",
                size=size,
                batch=batch,
                dtype="float32",
                ms=round(ms, 3),
                gbps=math.nan,
                copy_gbps=math.nan,
                frac_copy_bw=math.nan,
                peak_mb=round(_peak_mb(step, device), 1),
                saved_mb=float("nan"),
            )
        )
    return rows


def run(out="bench/kernels.csv", plot="bench/kernels.png", cpu_smoke=False, **kw) -> list[dict]:
    from aef_hpc.bench.report import write_csv

    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif cpu_smoke:
        device = torch.device("cpu")
    else:
        raise ConfigError(
            "aef-hpc bench kernels needs a CUDA device (timings of Triton's CPU interpreter mean nothing); "
            "--cpu-smoke runs a tiny smoke test of the benchmark itself"
        )
    model_kw = kw.pop("model", {})
    rows = run_ops(device, **kw) + model_step_rows(device, **model_kw)
    write_csv(rows, out)
    plot_rows(rows, plot)
    return rows


def plot_rows(rows, path, size="3x64x64", mode="full"):
    """A bar chart (PIL, no plotting dependency): ms per op and provider at one size and mode."""
    from pathlib import Path

    from PIL import Image, ImageDraw

    chosen = [r for r in rows if r["size"] == size and r["mode"] == mode and r["op"] in {o.name for o in OPS}]
    if not chosen:
        chosen = [r for r in rows if r["mode"] == mode and r["op"] in {o.name for o in OPS}]
        size = chosen[0]["size"] if chosen else size
        chosen = [r for r in chosen if r["size"] == size]
    ops = list(dict.fromkeys(r["op"] for r in chosen))
    providers = list(dict.fromkeys(r["provider"] for r in chosen))
    colours = {"triton": (31, 119, 180), "eager": (255, 127, 14), "compile": (44, 160, 44)}
    width, height, left, bottom = 160 * max(1, len(ops)) + 80, 360, 60, 300
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    top = max((r["ms"] for r in chosen), default=1.0) or 1.0
    draw.text(
        (10, 5), f"{mode}: ms at batch {chosen[0]['batch'] if chosen else '?'} x {size} (lower is better)", fill="black"
    )
    for i, op in enumerate(ops):
        x0 = left + 160 * i
        draw.text((x0, bottom + 10), op, fill="black")
        for j, provider in enumerate(providers):
            match = [r for r in chosen if r["op"] == op and r["provider"] == provider]
            if not match:
                continue
            bar = int((bottom - 40) * match[0]["ms"] / top)
            draw.rectangle([x0 + 40 * j, bottom - bar, x0 + 40 * j + 30, bottom], fill=colours.get(provider, "gray"))
            draw.text((x0 + 40 * j, bottom - bar - 12), f"{match[0]['ms']:.3g}", fill="black")
    for j, provider in enumerate(providers):
        draw.rectangle([width - 90, 20 + 15 * j, width - 80, 30 + 15 * j], fill=colours.get(provider, "gray"))
        draw.text((width - 75, 18 + 15 * j), provider, fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
